"""Evaluation reports and temperature scaling on the shared real datasets (issue: evaluation).

For each (dataset, strategy): train graft's default recipe, run ``Run.evaluate`` on the
validation split (which writes metrics.json, the PNGs and report.html), and record:
- ECE / log loss before (T = 1) and after the temperature fitted on validation, and the accuracy
  both ways (temperature scaling must not change it);
- an honest held-out figure: 2-fold cross-fitting on validation (fit T on one half as graft does,
  measure ECE on the other, and the other way round), since the in-sample "after" is optimistic;
- that the report has every section and every figure.

    python benchmarks/calibration.py [--only hymenoptera_256:linear_probe ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import DATA_DIR, write_result

CASES = [("hymenoptera_256", "linear_probe"), ("hymenoptera_256", "lp_ft"),
         ("caltech101_10_160", "linear_probe"), ("caltech101_10_160", "lp_ft")]
SECTIONS = ["summary", "metrics", "calibration", "training", "confusion", "curves", "classes",
            "errors"]


def cross_fit_ece(logits: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict[str, float]:
    from graftkit.evaluate.calibration import fit_calibration
    from graftkit.evaluate.metrics import calibration_errors

    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    halves = perm[: len(y) // 2], perm[len(y) // 2:]
    before, after = [], []
    for fit_idx, test_idx in (halves, halves[::-1]):
        t = fit_calibration(logits[fit_idx], y[fit_idx], [""] * logits.shape[1])[0].temperature
        yt = y[test_idx].numpy()
        before.append(calibration_errors(logits[test_idx].softmax(-1).double().numpy(), yt)["ece"])
        after.append(calibration_errors((logits[test_idx] / t).softmax(-1).double().numpy(),
                                        yt)["ece"])
    return {"ece_before": float(np.mean(before)), "ece_after": float(np.mean(after))}


def main() -> None:
    import graftkit
    from graftkit.inference import outputs, run_split

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
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ev = run.evaluate(split="val")
            eval_s = time.perf_counter() - t0
            page = Path(ev["report"]).read_text()
            figures = sorted(p.name for p in Path(ev["report"]).parent.glob("*.png"))
            items, _, _ = run_split(run, "val")
            logits, y = outputs(run, items)
            row = {"data": data, "strategy": strategy, "n_val": ev["n"],
                   "temperature": ev["calibration"]["temperature"],
                   "temperature_nll": ev["calibration"]["temperature_nll"],
                   "accuracy_before": ev["uncalibrated"]["accuracy"],
                   "accuracy_after": ev["accuracy"],
                   "ece_before": ev["uncalibrated"]["ece"], "ece_after": ev["ece"],
                   "log_loss_before": ev["uncalibrated"]["log_loss"],
                   "log_loss_after": ev["log_loss"],
                   "cross_fit": cross_fit_ece(logits, y),
                   "sections_missing": [s for s in SECTIONS if f'id="{s}"' not in page],
                   "figures": figures, "train_s": train_s, "evaluate_s": eval_s}
            rows.append(row)
            cf = row["cross_fit"]
            print(f"{data:<18} {strategy:<12} T {row['temperature']:.3f} (NLL optimum "
                  f"{row['temperature_nll']:.3f})  acc "
                  f"{row['accuracy_before']:.4f}->{row['accuracy_after']:.4f}  ECE "
                  f"{row['ece_before']:.4f}->{row['ece_after']:.4f} (2-fold held-out "
                  f"{cf['ece_before']:.4f}->{cf['ece_after']:.4f})  {len(figures)} figures, "
                  f"missing sections: {row['sections_missing'] or 'none'}  "
                  f"evaluate {eval_s:.0f} s")
    print(f"written to {write_result('calibration', {'rows': rows})}")


if __name__ == "__main__":
    main()
