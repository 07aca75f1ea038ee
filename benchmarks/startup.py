"""Start-up: what a graft command costs before it does any work. Wall time of fresh processes,
interleaved, ``--runs`` each: ``import graftkit`` (the package, no torch), ``import graftkit.api``
(what every training or predicting command loads), ``graft --help`` and ``graft list``; and the
slowest imports of ``graftkit.api`` (``python -X importtime``).

    python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import write_result

COMMANDS = {
    "import graftkit": [sys.executable, "-c", "import graftkit"],
    "import graftkit.api": [sys.executable, "-c", "import graftkit.api"],
    "graft --help": [sys.executable, "-m", "graftkit.cli.main", "--help"],
    "graft list": [sys.executable, "-m", "graftkit.cli.main", "list"],
}


def slowest_imports(n: int = 8) -> list[dict]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import graftkit.api"],
                         capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].strip()
            if "." not in name:  # top-level packages: their cumulative time
                rows.append({"module": name, "cumulative_s": int(parts[1]) / 1e6})
    return sorted(rows, key=lambda r: -r["cumulative_s"])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    load = round(os.getloadavg()[0], 2)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.runs):  # interleaved: A B C D A B C D ...
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(round(time.perf_counter() - t0, 3))
    result = {"load_avg_1m_before": load, "runs": args.runs,
              "median_s": {k: statistics.median(v) for k, v in times.items()}, "all_s": times,
              "slowest_top_level_imports": slowest_imports(),
              "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    for k, v in result["median_s"].items():
        print(f"{k:<22} {v:6.2f} s (median of {args.runs})")
    print(write_result("startup", result))


if __name__ == "__main__":
    main()
