from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# A tiny locally built network (timm's test_efficientnet, random init) at 64 px: real training
# through the whole pipeline in seconds. Accuracy targets use the real pretrained backbone.
TINY = ["--model", "test_efficientnet", "model.pretrained=false", "model.image_size=64",
        "train.threads=1"]


def graft(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "graftkit.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"graft {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def read_history(run: Path) -> list[dict]:
    import json

    return [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines() if ln]


@pytest.fixture(scope="session")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default linear probe on hymenoptera_256 (pretrained efficientnet_lite0), shared by
    the tests that read a real finished run."""
    from tests.conftest import shared_dataset

    data = shared_dataset("hymenoptera_256")
    out = tmp_path_factory.mktemp("runs") / "probe"
    graft("train", "--data", data, "--strategy", "linear_probe", "--out", out)
    return out
