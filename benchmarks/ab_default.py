"""The default ``graft train`` of this checkout against another commit's, side by side: cold
cache, same threads, interleaved pairs (base, this, base, this, ...), whole-process wall time and
meta.json's phases. For a change on the default path, measured on this machine's noise. Both
commits' modules are imported once, untimed, first (a fresh worktree compiles its bytecode).

The other commit runs from a temporary git worktree (its ``src`` first on ``PYTHONPATH``) with
this checkout's virtual environment.

    python benchmarks/ab_default.py --base REV [--set hymenoptera] [--threads 2] [--pairs 5]
                                   [--name ab_default]

Writes benchmarks/results/<name>.json (both commits, every run, machine, load averages).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import GRAFT_WARM_UP, IMAGE_SETS, ROOT, graft_cli, write_result

PHASES = ("startup", "setup", "data", "features", "training", "report", "gallery")


def _rev(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare with")
    ap.add_argument("--set", default="hymenoptera", choices=sorted(IMAGE_SETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--name", default="ab_default", help="results file name (a change's own)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        args.base], check=True)
        try:
            sources = {"base": tree / "src", "this": ROOT / "src"}
            for src in sources.values():  # untimed: a fresh worktree's first import compiles
                subprocess.run([sys.executable, "-c", GRAFT_WARM_UP], check=True,
                               env=dict(os.environ, PYTHONPATH=str(src)))
            for i in range(args.pairs):
                for which, src in sources.items():
                    out = Path(tmp) / f"{which}-{i}"
                    env = dict(os.environ, PYTHONPATH=str(src),
                               GRAFT_CACHE_DIR=str(out) + "-cache")
                    load = round(os.getloadavg()[0], 2)
                    wall, _ = graft_cli(args.threads, "train", "--data",
                                        str(IMAGE_SETS[args.set]), "--out", str(out), "--quiet",
                                        env=env)
                    meta = json.loads((out / "meta.json").read_text())
                    val = json.loads((out / "metrics.json").read_text())["val"]["accuracy"]
                    row = {"commit": which, "pair": i, "wall_s": round(wall, 2),
                           "load_avg_1m_before": load, "val_accuracy": val,
                           "timings": {k: meta["timings"].get(k) for k in PHASES},
                           "export_s": (meta.get("feature_engine") or {}).get("export_s")}
                    rows.append(row)
                    print(f"{which:<5} pair {i}  {wall:6.2f} s  features "
                          f"{row['timings']['features']:.2f} s  val {val:.4f}  (load {load})",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
    summary = {}
    for which in ("base", "this"):
        mine = [r for r in rows if r["commit"] == which]
        summary[which] = {k: {"mean": round(statistics.mean(v), 3),
                              "median": round(statistics.median(v), 3)}
                          for k, v in (("wall_s", [r["wall_s"] for r in mine]),
                                       *((f"{ph}_s", [r["timings"][ph] for r in mine])
                                         for ph in PHASES))}
        print(which, summary[which])
    path = write_result(args.name, {
        "set": args.set, "threads": args.threads, "pairs": args.pairs,
        "commits": {"base": _rev(args.base), "this": _rev("HEAD") + " + working tree"},
        "summary": summary, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
