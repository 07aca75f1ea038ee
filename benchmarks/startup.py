"""Start-up: what a graft command costs before it does any work. Wall time of fresh processes,
interleaved, ``--runs`` each: ``import graftkit`` (the package, no torch), ``import graftkit.api``
(what every training or predicting command loads), ``graft --help``, ``graft list`` and ``import
onnx`` (what a first export of a feature engine loads); and the slowest imports of
``graftkit.api`` (``python -X importtime``). Then what an image model adds: ``import torch``
alone, with ``torch._dynamo``, with ``torchvision`` and with ``timm``.

``--ml-dtypes 0.6.0,0.7.0`` also times ``import ml_dtypes`` (onnx's dependency) for each of those
releases side by side, each wheel fetched with pip into a temporary folder: the reason
pyproject.toml's ``export`` extra keeps it below 0.7.

    python benchmarks/startup.py [--runs 5] [--ml-dtypes 0.6.0,0.7.0]
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
    "import onnx": [sys.executable, "-c", "import onnx"],
    # what an image model costs on top of graftkit.api: timm imports torchvision, whose
    # ops.roi_align imports torch._dynamo (torchvision 0.29)
    "import torch": [sys.executable, "-c", "import torch"],
    "import torch, torch._dynamo": [sys.executable, "-c", "import torch, torch._dynamo"],
    "import torch, torchvision": [sys.executable, "-c", "import torch, torchvision"],
    "import torch, timm": [sys.executable, "-c", "import torch, timm"],
}


def ml_dtypes_imports(versions: list[str], runs: int) -> dict[str, list[float]]:
    """``import numpy, ml_dtypes`` less ``import numpy``, per release, interleaved."""
    import tempfile

    times: dict[str, list[float]] = {v: [] for v in versions}
    with tempfile.TemporaryDirectory() as tmp:
        for v in versions:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                            "--target", f"{tmp}/{v}", f"ml_dtypes=={v}"], check=True)
        for _ in range(runs):
            for v in versions:
                env = dict(os.environ, PYTHONPATH=f"{tmp}/{v}")
                code = ("import time, numpy; t = time.perf_counter(); import ml_dtypes; "
                        "print(time.perf_counter() - t)")
                out = subprocess.run([sys.executable, "-c", code], check=True, env=env,
                                     capture_output=True, text=True).stdout
                times[v].append(round(float(out), 4))
    return times


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
    ap.add_argument("--ml-dtypes", default="", help="releases to compare, e.g. 0.6.0,0.7.0")
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
    if args.ml_dtypes:
        mt = ml_dtypes_imports(args.ml_dtypes.split(","), args.runs)
        result["import_ml_dtypes_s"] = {"median": {v: statistics.median(t) for v, t in mt.items()},
                                        "all": mt}
        for v, t in mt.items():
            print(f"import ml_dtypes {v:<6} {statistics.median(t):6.3f} s (median of {args.runs})")
    for k, v in result["median_s"].items():
        print(f"{k:<22} {v:6.2f} s (median of {args.runs})")
    print(write_result("startup", result))


if __name__ == "__main__":
    main()
