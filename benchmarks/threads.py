"""What one thread setting buys when another CPU-heavy job shares the machine.

Two workloads, each a real ``graft`` command in its own process:

* ``demo``: ``graft demo`` (LP-FT of efficientnet_lite0 on the digits, evaluation, report);
* ``probe``: ``graft train`` the default linear probe on hymenoptera_256 with the feature cache
  in memory only (every photo's features extracted once, as on a first run, then the head).

Each is timed in three conditions, one after the other in this one run:

* ``alone``: nothing else running, graft's default threads (the cores of its affinity);
* ``beside, unset``: a second process runs a CPU-heavy torch loop (matrix products) with torch's
  default threads, and graft runs with as many threads as there are cores (``GRAFT_THREADS`` =
  the core count: torch's own default, what every path did before the setting, and what a tool
  without one does), so the two ask for twice the cores there are;
* ``beside, set``: the same neighbour and graft each given half the cores (``GRAFT_THREADS`` and
  the neighbour's ``torch.set_num_threads``), as the README tells users to run two jobs.

The ratio ``unset / set`` is the figure quoted in the README. Load average is recorded before
each timing; run it on an otherwise idle machine (about 25 minutes on 2 cores: the demo beside
the neighbour with threads unset alone takes about 11). Each workload is saved as it finishes;
``--workloads probe`` reruns one and keeps the others' figures.

    python benchmarks/threads.py [--workloads demo,probe]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, ROOT, write_result

NEIGHBOUR = """
import sys, torch
torch.set_num_threads(int(sys.argv[1])) if sys.argv[1] != "default" else None
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a / 768)
"""


def graft_cmd(workload: str, out: Path) -> list[str]:
    exe = [sys.executable, "-m", "graftkit.cli.main"]
    if workload == "demo":
        return [*exe, "demo", "--out", str(out), "-q"]
    return [*exe, "train", "--data", str(DATA_DIR / "hymenoptera_256"), "--strategy",
            "linear_probe", "train.feature_cache=memory", "--out", str(out), "-q"]


def timed(workload: str, threads: int | None, neighbour: str | None, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFT_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:
        env["GRAFT_THREADS"] = str(threads)
    side = None
    if neighbour is not None:
        side = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, neighbour], env=env)
        time.sleep(3)  # let it reach its loop
    load = os.getloadavg()[0]
    out = tmp / f"{workload}-{threads}-{neighbour}"
    t0 = time.perf_counter()
    try:
        subprocess.run(graft_cmd(workload, out), env=env, check=True, timeout=1800,
                       stdout=subprocess.DEVNULL)
    finally:
        seconds = time.perf_counter() - t0
        if side is not None:
            side.kill()
            side.wait()
    return {"seconds": round(seconds, 1), "graft_threads": threads, "neighbour_threads":
            neighbour, "load_avg_1m_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="demo,probe")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    half = max(1, cores // 2)
    saved = ROOT / "benchmarks" / "results" / "threads.json"  # workloads run earlier are kept
    results = json.loads(saved.read_text())["workloads"] if saved.is_file() else {}
    with tempfile.TemporaryDirectory() as d:
        for w in args.workloads.split(","):
            r = {"alone": timed(w, None, None, Path(d)),
                 "beside_unset": timed(w, cores, "default", Path(d)),
                 "beside_set": timed(w, half, str(half), Path(d))}
            r["slowdown_unset_vs_set"] = round(r["beside_unset"]["seconds"]
                                               / r["beside_set"]["seconds"], 2)
            r["beside_set_vs_alone"] = round(r["beside_set"]["seconds"]
                                             / r["alone"]["seconds"], 2)
            results[w] = {**r, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_result("threads", {"cores": cores, "workloads": results})
            print(f"{w:6} alone {r['alone']['seconds']:7.1f}s  beside a CPU-heavy job: "
                  f"threads unset ({cores}) {r['beside_unset']['seconds']:7.1f}s, set ({half}) "
                  f"{r['beside_set']['seconds']:7.1f}s  -> unset/set "
                  f"{r['slowdown_unset_vs_set']:.2f}x", flush=True)
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
