"""``graft robustness`` wall time, before and after, side by side: 15 ImageNet-C corruptions x 5
severities (75 cells) plus the clean pass on a run's whole validation split, the default recipe
(a cached linear probe of efficientnet_lite0) trained once per set.

- ``before``: what ``graft robustness`` did until now: eager torch, and one corrupting worker
  process per core beside the model's threads (``--engine torch --workers <cores>``);
- ``after``: today's default: the backbone on ONNX Runtime (exported once per weights digest;
  the export of the first ``after`` run is timed in it), its input converted per batch, and
  corruption in the cores the model's threads leave free, or, when they leave none (2 threads
  on 2 cores), by as many worker processes as the model has threads, taking turns with it.
  results.json's ``timing`` splits the scoring seconds into the model's and the rest;
- ``in_process``: ``after`` with every image corrupted in the model's process, between model
  batches (``--workers 0``; the default until workers took turns with the model).

Interleaved before / after per repetition, same threads; whole-process wall time, the scoring
seconds results.json records, and the mCA of each (identical corrupted pixels: per-image seeds).

    python benchmarks/robustness_speed.py [--threads 2] [--reps 1] [--sets hymenoptera]
        [--limit N] [--modes before,after,in_process]

Writes benchmarks/results/robustness_speed.json (machine, versions, load average before each).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import IMAGE_SETS as SETS
from _common import graft_cli, write_result

# in this order: ``after`` pays the ONNX export, as a user's first robustness run does
MODES = {"before": ["--engine", "torch", "--workers", str(os.cpu_count() or 1)], "after": [],
         "in_process": ["--workers", "0"]}


def graft(threads: int, *args: str, env: dict[str, str]) -> float:
    return graft_cli(threads, *args, env=env)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--sets", default="hymenoptera")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--modes", default=",".join(MODES), help="which of before,after,in_process")
    args = ap.parse_args()
    modes = {m: MODES[m] for m in args.modes.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"))
        for name in args.sets.split(","):
            run = Path(tmp) / name
            graft(args.threads, "train", "--data", str(SETS[name]), "--out", str(run), "-q",
                  env=env)
            for rep in range(args.reps):
                for mode, extra in modes.items():
                    load = round(os.getloadavg()[0], 2)
                    limit = ["--limit", str(args.limit)] if args.limit else []
                    wall = graft(args.threads, "robustness", str(run), "-q", *limit, *extra,
                                 env=env)
                    r = json.loads((run / "robustness" / "results.json").read_text())
                    row = {"set": name, "mode": mode, "rep": rep, "args": extra,
                           "load_avg_1m_before": load, "wall_s": round(wall, 2),
                           "scoring_s": round(r["seconds"], 2), "engine": r["engine"],
                           "n": r["n"], "cells": len(r["corruptions"]) * len(r["severities"]),
                           "mca": r["mca"], "clean_accuracy": r["clean_accuracy"],
                           "timing": r.get("timing")}
                    rows.append(row)
                    print(f"{name} {mode:>6}: wall {wall:.1f} s, scoring {r['seconds']:.1f} s, "
                          f"mCA {r['mca']:.4f} ({r['engine']}; load {load})", flush=True)
    summary = {}
    for name in args.sets.split(","):
        mine = {m: [r for r in rows if r["set"] == name and r["mode"] == m] for m in modes}
        mean = {m: {k: sum(r[k] for r in v) / len(v) for k in ("wall_s", "scoring_s")}
                for m, v in mine.items()}
        summary[name] = {
            "wall_ratio": round(mean["before"]["wall_s"] / mean["after"]["wall_s"], 2),
            **({"wall_ratio_in_process": round(mean["before"]["wall_s"]
                                               / mean["in_process"]["wall_s"], 2)}
               if "in_process" in mean else {}),
            "scoring_ratio": round(mean["before"]["scoring_s"] / mean["after"]["scoring_s"], 2),
            "same_mca": len({r["mca"] for v in mine.values() for r in v}) == 1, **mean}
    path = write_result("robustness_speed", {"threads": args.threads, "reps": args.reps,
                                             "limit": args.limit, "rows": rows,
                                             "summary": summary})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
