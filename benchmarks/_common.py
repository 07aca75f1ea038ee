"""Shared helpers for benchmarks: machine/version facts and the results JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GRAFT_DATA_DIR", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
IMAGE_SETS = {"hymenoptera": DATA_DIR / "hymenoptera_256",
              "caltech": DATA_DIR / "caltech101_10_160"}


# graft's modules, imported once untimed before timed runs: a fresh checkout's first import
# compiles its bytecode and reads its files from disk, which no later run pays
GRAFT_WARM_UP = ("import graftkit.api, graftkit.session, graftkit.evaluate.report, "
                 "graftkit.explain.images, graftkit.train.engines, onnxruntime, onnxscript")


def graft_cli(threads: int, *args: str, env: dict[str, str]) -> tuple[float, str]:
    """Run ``graft --threads N ARGS`` in a new process: (whole-process wall seconds, stdout)."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "graftkit.cli.main", "--threads", str(threads),
                           *args], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc.stdout


def machine() -> dict[str, Any]:
    import timm
    import torch
    import torchvision

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, **result, "machine": machine()}, indent=2) + "\n")
    return out
