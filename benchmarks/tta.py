"""Test-time augmentation: what it buys (val accuracy, macro-F1, ECE, log loss) and what it costs
(whole ``graft evaluate`` wall time and model time), on the default recipe (a cached linear probe
of efficientnet_lite0) trained once per set; then ``graft evaluate RUN --split val --tta N`` for
each N, interleaved over repetitions, same threads. The numbers without TTA come from the same
pass (the first view is the plain model), so each row compares like with like.

The temperature was fitted on this val split, so both ECE columns are optimistic in the same way;
there is no test split in these sets.

    python benchmarks/tta.py [--threads 2] [--views 1,2,6,12] [--reps 1]
                             [--sets hymenoptera,caltech]

Writes benchmarks/results/tta.json (machine, versions, load average before each run).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--views", default="1,2,6,12")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--sets", default="hymenoptera,caltech")
    args = ap.parse_args()
    views = [int(v) for v in args.views.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"))
        for name in args.sets.split(","):
            run = Path(tmp) / name
            train_s, _ = graft(args.threads, "train", "--data", str(SETS[name]), "--out",
                               str(run), "--quiet", env=env)
            print(f"{name}: trained in {train_s:.1f} s", flush=True)
            for rep in range(args.reps):
                for n in views:
                    load = round(os.getloadavg()[0], 2)
                    wall, out = graft(args.threads, "evaluate", str(run), "--split", "val",
                                      "--json", "--tta", str(n), env=env)
                    m = json.loads(out)
                    t = m.get("tta") or {}
                    row = {"set": name, "views": n, "rep": rep, "load_avg_1m_before": load,
                           "n": m["n"], "evaluate_wall_s": round(wall, 2),
                           "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                           "ece": m["ece"], "log_loss": m["log_loss"],
                           "model_s": t.get("model_seconds_with"),
                           "without": t.get("without"), "fixed": t.get("fixed"),
                           "broken": t.get("broken"), "names": t.get("names", ["identity"])}
                    rows.append(row)
                    print(f"  {name} tta {n:>2}: acc {m['accuracy']:.4f} macro-F1 "
                          f"{m['macro_f1']:.4f} ECE {m['ece']:.4f} log loss {m['log_loss']:.4f}"
                          f"  evaluate {wall:.1f} s"
                          + (f" (model {t['model_seconds_with']:.1f} s; fixed {t['fixed']}, "
                             f"broke {t['broken']})" if t else ""), flush=True)
    summary = {}
    for name in args.sets.split(","):
        mine = [r for r in rows if r["set"] == name]
        base = [r for r in mine if r["views"] == 1]
        plain_wall = sum(r["evaluate_wall_s"] for r in base) / max(1, len(base))
        summary[name] = {str(n): {
            "accuracy": [r["accuracy"] for r in mine if r["views"] == n],
            "ece": [r["ece"] for r in mine if r["views"] == n],
            "wall_ratio_vs_1_view": round(sum(r["evaluate_wall_s"] for r in mine
                                              if r["views"] == n)
                                          / max(1, sum(r["views"] == n for r in mine))
                                          / plain_wall, 2) if plain_wall else None}
            for n in views}
    path = write_result("tta", {"threads": args.threads, "reps": args.reps, "rows": rows,
                                "summary": summary})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
