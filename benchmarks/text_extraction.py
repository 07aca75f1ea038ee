"""Text feature extraction of a frozen encoder: the texts read in the data's order (each batch
padded to its longest text) against read shortest first (``TextDataset.extraction_order``, what
graftkit does), same process, same threads, interleaved A B A B; the features of both must agree.

    python benchmarks/text_extraction.py [--threads 2] [--reps 2] [--sets sms_spam,trec]
        [--model all-MiniLM-L6-v2]

Texts/s over each set's train.csv, and the max |difference| between the two feature matrices.
Writes benchmarks/results/text_extraction.json (machine, versions, load average per round).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sets", default="sms_spam,trec")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    args = ap.parse_args()

    import torch

    from graftkit import modalities
    from graftkit.config import build_config
    from graftkit.launch import resolve_inputs
    from graftkit.threads import use_threads
    from graftkit.train.features import extract

    use_threads(args.threads)
    rows = []
    for name in args.sets.split(","):
        cfg = resolve_inputs(build_config(overrides={
            "data.path": str(DATA_DIR / name / "train.csv"), "model.name": args.model}))
        mod = modalities.get(cfg.data.modality)
        spec = mod.discover(cfg.data, cfg.task)
        items = [it for split in spec.splits.values() for it in split]  # train + val: all
        with tempfile.TemporaryDirectory() as tmp:
            model, _ = mod.create_model(cfg.model, spec, len(spec.classes), Path(tmp), False)
        model.eval()
        batch = mod.eval_batch(cfg.data, torch.device("cpu"))
        ds = model.make_dataset(items, cfg.task)
        times: dict[str, list[float]] = {"in order": [], "shortest first": []}
        loads, feats = [], {}
        for _ in range(args.reps):
            for label, sort in (("in order", False), ("shortest first", True)):
                loads.append(round(os.getloadavg()[0], 2))
                t0 = time.perf_counter()
                x, _ = extract(model.features, ds, batch, torch.device("cpu"),
                               collate=model.collate, sort=sort)
                times[label].append(time.perf_counter() - t0)
                feats[label] = x
        diff = float((feats["in order"] - feats["shortest first"]).abs().max())
        best = {k: min(v) for k, v in times.items()}
        row = {"set": name, "model": args.model, "texts": len(items), "batch_size": batch,
               "seconds": times, "texts_per_s": {k: len(items) / v for k, v in best.items()},
               "speedup": best["in order"] / best["shortest first"],
               "max_abs_feature_diff": diff, "load_avg_1m": loads}
        rows.append(row)
        print(f"{name:<9} {len(items)} texts, batch {batch}: in order "
              f"{row['texts_per_s']['in order']:.0f} texts/s, shortest first "
              f"{row['texts_per_s']['shortest first']:.0f} texts/s: {row['speedup']:.2f}x; "
              f"max |dfeature| {diff:.1e} (load {loads})", flush=True)
    path = write_result("text_extraction", {"threads": args.threads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
