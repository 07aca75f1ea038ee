"""Multi-label classification on sets built from the shared data (``tests/multilabel_data.py``):

* ``tiles``: caltech101_10_160 photos tiled 2 x 2, one or two of its 10 classes per image (a
  quarter show one class). Train tiles from caltech's train photos, val and test tiles from
  alternate halves of its val photos. Default: the built-in efficientnet_lite0 probe.
* ``trec``: every TREC question with its coarse and its fine label (``NUM;NUM:dist``), val split
  from train (seeded, stratified by each row's rarest label); test: TREC's test questions whose
  fine label the training data has. Default: the built-in all-MiniLM-L6-v2 probe.

For each set and loss (``bce``, ``asl``) the table gives val and test macro-F1 with the tuned
per-label thresholds and at 0.5, micro-F1, mAP, subset accuracy, mean per-label ECE before and
after calibration, and the whole-process wall time (cold feature cache).

    python benchmarks/multilabel.py [--threads 2] [--sets tiles,trec] [--losses bce,asl]
        [--tiles 600,200,200]

Writes benchmarks/results/multilabel.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _common import DATA_DIR, ROOT, write_result
from _common import graft_cli as graft

sys.path.insert(0, str(ROOT))
from tests.multilabel_data import image_tiles, trec_pairs  # noqa: E402

MODELS = {"tiles": "efficientnet_lite0", "trec": "all-MiniLM-L6-v2"}
KEYS = ("macro_f1", "micro_f1", "samples_f1", "mAP", "subset_accuracy", "hamming_loss", "ece",
        "label_cardinality", "n")


def _data(name: str, tmp: Path, tiles: list[int]) -> list[str]:
    if name == "tiles":
        csv = image_tiles(DATA_DIR / "caltech101_10_160", tmp / "tiles",
                          dict(zip(("train", "val", "test"), tiles)))
        return ["--data", str(csv)]
    train, test = trec_pairs(DATA_DIR / "trec", tmp / "trec")
    return ["--data", str(train), "--test", str(test)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="tiles,trec")
    ap.add_argument("--losses", default="bce,asl")
    ap.add_argument("--tiles", default="600,200,200", help="tiles in train,val,test")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            data = _data(name, Path(tmp), [int(n) for n in args.tiles.split(",")])
            for loss in args.losses.split(","):
                out = Path(tmp) / f"{name}-{loss}"
                env = dict(os.environ, GRAFT_CACHE_DIR=str(out) + "-cache")
                load = round(os.getloadavg()[0], 2)
                wall, _ = graft(args.threads, "train", *data, "--model", MODELS[name],
                                "--out", str(out), "--quiet", "--no-audit",
                                f"loss.name={loss}", env=env)
                m = json.loads((out / "metrics.json").read_text())
                row = {"set": name, "model": MODELS[name], "loss": loss,
                       "wall_s": round(wall, 1), "load_avg_1m_before": load,
                       "labels": len(m["val"]["per_label"])}
                for split in ("val", "test"):
                    row[split] = {**{k: m[split][k] for k in KEYS},
                                  "at_0.5": m[split]["at_0.5"]}
                rows.append(row)
                v, t = row["val"], row["test"]
                print(f"{name:<6} {loss:<4} {row['labels']} labels  val macro-F1 "
                      f"{v['macro_f1']:.4f} (0.5: {v['at_0.5']['macro_f1']:.4f})  test macro-F1 "
                      f"{t['macro_f1']:.4f} (0.5: {t['at_0.5']['macro_f1']:.4f}) mAP "
                      f"{t['mAP']:.4f} ECE {t['at_0.5']['ece']:.4f}->{t['ece']:.4f}  "
                      f"{wall:.0f} s (load {load})", flush=True)
    path = write_result("multilabel", {"threads": args.threads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
