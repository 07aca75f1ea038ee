"""Robust fine-tuning methods compared on clean accuracy and ImageNet-C corruption accuracy.

For each dataset: full fine-tuning (graft's default recipe), full + AugMix, LP-FT, and WiSE-FT
(the LP-FT run's probe and fine-tuned weights mixed, alpha picked on validation accuracy). Every
model is then scored by ``graft robustness`` on the validation split: the 15 ImageNet-C
corruptions x severities 1-5 (mCA = mean over the 75 cells). LP-FT and WiSE-FT come from the same
training run (WiSE-FT's alpha = 1 end is the LP-FT model).

    python benchmarks/robustness.py [--only hymenoptera_256] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result

DATASETS = ["hymenoptera_256", "caltech101_10_160"]
METHODS = {"full": ("full", {}), "full+augmix": ("full", {"train.augment": "augmix"}),
           "lp_ft+wise_ft": ("lp_ft", {"train.wise_ft": "auto"})}


def _lp_ft_copy(run_dir: Path, dest: Path) -> Path:
    """The LP-FT model (WiSE-FT's alpha = 1 end) as a run directory of its own."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("eval", "robustness"))
    shutil.copy(dest / "checkpoints" / "finetuned.safetensors", dest / "model.safetensors")
    meta = json.loads((dest / "meta.json").read_text())
    meta["wise_ft"] = None
    (dest / "meta.json").write_text(json.dumps(meta, indent=2))
    return dest


def main() -> None:
    import graftkit

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--limit", type=int, default=None, help="robustness images per dataset")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        for data in args.only or DATASETS:
            runs: dict[str, tuple[Path, float]] = {}
            for method, (strategy, extra) in METHODS.items():
                t0 = time.perf_counter()
                run = graftkit.finetune(data=DATA_DIR / data, strategy=strategy, quiet=True,
                                        out=Path(tmp) / f"{data}-{method}", overrides=extra)
                seconds = time.perf_counter() - t0
                if method == "lp_ft+wise_ft":
                    runs["lp_ft"] = (_lp_ft_copy(run.path, Path(tmp) / f"{data}-lp_ft"),
                                     seconds)
                    runs["wise_ft"] = (run.path, seconds)
                else:
                    runs[method] = (run.path, seconds)
            for method, (path, train_s) in runs.items():
                run = graftkit.load_run(path)
                t0 = time.perf_counter()
                r = run.robustness(limit=args.limit)
                row = {"data": data, "method": method, "clean_accuracy": r["clean_accuracy"],
                       "val_accuracy": run.metrics["val"]["accuracy"], "mca": r["mca"],
                       "relative_robustness": r["relative_robustness"], "n": r["n"],
                       "corruptions": {k: v["mean"] for k, v in r["corruptions"].items()},
                       "wise_ft_alpha": (run.meta.get("wise_ft") or {}).get("alpha"),
                       "train_s": train_s, "robustness_s": time.perf_counter() - t0}
                rows.append(row)
                print(f"{data:<18} {method:<12} clean {row['clean_accuracy']:.4f}  mCA "
                      f"{row['mca']:.4f}  rel {row['relative_robustness']:.3f}"
                      + (f"  alpha {row['wise_ft_alpha']}" if row["wise_ft_alpha"] else "")
                      + f"  ({row['robustness_s']:.0f} s)", flush=True)
    for data in {r["data"] for r in rows}:
        base = next((r for r in rows if r["data"] == data and r["method"] == "full"), None)
        for r in rows:
            if base and r["data"] == data:
                r["d_mca_vs_full"] = r["mca"] - base["mca"]
                r["d_clean_vs_full"] = r["clean_accuracy"] - base["clean_accuracy"]
    print(f"written to {write_result('robustness', {'rows': rows})}")


if __name__ == "__main__":
    main()
