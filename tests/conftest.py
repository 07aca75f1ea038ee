"""Shared fixtures. Real data comes from ../shared/data (override with GRAFT_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GRAFT_DATA_DIR", ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub (CI has none)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # `make test` runs one pytest worker per core (pytest-xdist): each worker, and every graft it
    # starts, uses one thread, so the workers never oversubscribe the cores
    os.environ.setdefault("GRAFT_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def shared_dataset(name: str) -> Path:
    p = DATA_DIR / name
    if not p.is_dir():
        pytest.skip(f"shared dataset {name} not found at {p} (set GRAFT_DATA_DIR)")
    return p


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Feature caches and the demo's digits go to a per-session folder, never ~/.cache.
    os.environ["GRAFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("graft-cache"))


@pytest.fixture
def hymenoptera() -> Path:
    return shared_dataset("hymenoptera_256")


@pytest.fixture
def caltech() -> Path:
    return shared_dataset("caltech101_10_160")


@pytest.fixture
def small_csv(hymenoptera: Path, tmp_path: Path) -> Path:
    """A CSV manifest of 24 train + 12 val real photos (ants/bees), for quick training tests."""
    rows = ["path,label,split"]
    for split, n in (("train", 12), ("val", 6)):
        for cls in ("ants", "bees"):
            files = sorted((hymenoptera / split / cls).glob("*.jpg"))[:n]
            rows += [f"{f},{cls},{split}" for f in files]
    p = tmp_path / "small.csv"
    p.write_text("\n".join(rows) + "\n")
    return p
