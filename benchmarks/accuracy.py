"""Accuracy of graft's default recipes on the shared real datasets (CPU, deterministic).

Trains each (dataset, strategy) pair through the real CLI code path with default settings and
records the validation accuracy of the selected (best-on-validation) checkpoint and of the last
epoch, plus the wall time. These are the figures the README quotes.

    python benchmarks/accuracy.py [--only hymenoptera_256:lp_ft ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result

CASES = [("hymenoptera_256", "linear_probe"), ("hymenoptera_256", "lp_ft"),
         ("caltech101_10_160", "linear_probe"), ("caltech101_10_160", "lp_ft")]


def main() -> None:
    import graftkit

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="dataset:strategy pairs")
    args = ap.parse_args()
    cases = [tuple(c.split(":")) for c in args.only] if args.only else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        for data, strategy in cases:
            t0 = time.perf_counter()
            run = graftkit.finetune(data=DATA_DIR / data, strategy=strategy,
                                    out=Path(tmp) / f"{data}-{strategy}", quiet=True)
            seconds = time.perf_counter() - t0
            hist = [json.loads(ln) for ln in (run.path / "history.jsonl").read_text().splitlines()]
            row = {"data": data, "strategy": strategy, "model": run.meta["model"]["name"],
                   "val_accuracy": run.metrics["val"]["accuracy"],
                   "val_accuracy_last_epoch": hist[-1]["val_accuracy"],
                   "best_epoch": run.metrics["best_epoch"], "epochs": len(hist),
                   "seconds": seconds}
            rows.append(row)
            print(f"{data:<20} {strategy:<13} val acc {row['val_accuracy']:.4f} (last epoch "
                  f"{row['val_accuracy_last_epoch']:.4f}, best epoch {row['best_epoch']}/"
                  f"{row['epochs']})  {seconds:6.0f} s")
    print(f"written to {write_result('accuracy', {'rows': rows})}")


if __name__ == "__main__":
    main()
