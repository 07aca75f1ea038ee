"""``--model auto`` against the default probe: what choosing the backbone buys and costs.

Per set, with a cold feature cache each time (a fresh ``GRAFT_CACHE_DIR`` per run) and the same
threads, in one process each (whole-process wall time): ``graft train --data SET`` (the default,
a cached linear probe of efficientnet_lite0), then ``graft train --data SET --model auto`` (every
built-in image backbone scored by a cross-validated probe on its cached features, combinations
of the best three too, then the default strategy on the winner). The table is the ranking the
run wrote (model_selection.json): each backbone's and combination's 5-fold cv accuracy on train,
the same regression's val accuracy (for information: it did not choose), and its time; then the
chosen model's own val accuracy after training, against the default's.

    python benchmarks/model_auto.py [--threads 2] [--sets hymenoptera,caltech] [--budget S]
                                    [--seeds 5]

``--seeds N``: then both the default model and auto's winner are trained again with
``train.seed`` 1 .. N-1 (features from the warm cache, no report), so the table shows how much
one val accuracy moves with the seed alone (the head's initialisation and batch order): the
spread over seeds 0 .. N-1.

Writes benchmarks/results/model_auto.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import IMAGE_SETS as SETS
from _common import graft_cli as graft
from _common import write_result


def _train(threads: int, data: Path, out: Path, cache: Path, *extra: str) -> dict:
    env = dict(os.environ, GRAFT_CACHE_DIR=str(cache))
    load = round(os.getloadavg()[0], 2)
    wall, _ = graft(threads, "train", "--data", str(data), "--out", str(out), "--quiet", *extra,
                    env=env)
    meta = json.loads((out / "meta.json").read_text())
    val = json.loads((out / "metrics.json").read_text())["val"]
    return {"wall_s": round(wall, 1), "load_avg_1m_before": load, "model": meta["model"]["name"],
            "val_accuracy": val["accuracy"], "val_n": val["n"], "val_macro_f1": val["macro_f1"],
            "timings": meta.get("timings")}


def _seeds(threads: int, data: Path, out: Path, cache: Path, model: str, n: int) -> list[float]:
    """Val accuracy of ``model`` trained with seeds 1 .. n-1 (the cache is warm)."""
    accs = []
    for seed in range(1, n):
        r = _train(threads, data, out / f"seed{seed}", cache, "--model", model,
                   f"train.seed={seed}", "report.enabled=false")
        accs.append(r["val_accuracy"])
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="hymenoptera,caltech")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=5, help="seeds per model for the spread "
                    "(1: the seed-0 runs alone)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            t = Path(tmp) / name
            default = _train(args.threads, SETS[name], t / "default", t / "cache-default")
            extra = ["--budget", str(args.budget)] if args.budget else []
            auto = _train(args.threads, SETS[name], t / "auto", t / "cache-auto",
                          "--model", "auto", *extra)
            ranking = json.loads((t / "auto" / "model_selection.json").read_text())
            results[name] = {"default": default, "auto": auto, "ranking": ranking["candidates"],
                             "skipped": ranking["skipped"], "selection_s": ranking["seconds"],
                             "auto_adds_s": round(auto["wall_s"] - default["wall_s"], 1)}
            if args.seeds > 1:  # the same two models again, seeds 1 .. N-1
                results[name]["seeds"] = {
                    "default": [default["val_accuracy"], *_seeds(
                        args.threads, SETS[name], t / "default-seeds", t / "cache-default",
                        default["model"], args.seeds)],
                    "auto": [auto["val_accuracy"], *_seeds(
                        args.threads, SETS[name], t / "auto-seeds", t / "cache-auto",
                        auto["model"], args.seeds)]}
            print(f"{name}: default {default['model']} val {default['val_accuracy']:.4f} in "
                  f"{default['wall_s']:.0f} s; auto -> {auto['model']} val "
                  f"{auto['val_accuracy']:.4f} in {auto['wall_s']:.0f} s (selection "
                  f"{ranking['seconds']:.0f} s)", flush=True)
            print(f"  {'backbone(s)':<52} {'cv acc':>7} {'val acc':>7} {'time':>7}")
            for c in ranking["candidates"]:
                val = "-" if c["val_accuracy"] is None else f"{c['val_accuracy']:.4f}"
                print(f"  {c['name']:<52} {c['cv_accuracy']:>7.4f} {val:>7} "
                      f"{c['seconds']:>6.1f}s")
            for s in ranking["skipped"]:
                print(f"  {s['name']:<52} skipped: {s['reason']}")
            for which, accs in results[name].get("seeds", {}).items():
                print(f"  {which} over seeds 0-{len(accs) - 1}: "
                      + " ".join(f"{a:.4f}" for a in accs))
    path = write_result("model_auto", {"threads": args.threads, "budget_s": args.budget,
                                       "seeds": args.seeds, "sets": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
