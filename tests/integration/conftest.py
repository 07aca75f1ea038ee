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


def graft(*args: str, check: bool = True, timeout: int = 600,
          env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", **(env_extra or {}))
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


# A real browser: Debian's Chromium driven by Playwright (it never downloads a browser).
CHROMIUM = os.environ.get("GRAFT_CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet on a machine without a network (see the project's CI notes).
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - a playwright Browser
    if not Path(CHROMIUM).is_file():
        if os.environ.get("GRAFT_REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM} (GRAFT_REQUIRE_BROWSER is set)")
        pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
