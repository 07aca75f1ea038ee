"""GPU path (runs only where CUDA is available; CI has none): bf16 autocast + channels_last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import TINY, graft, read_history

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_mixed_precision_run(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    graft("train", "--data", small_csv, "--strategy", "lp_ft", "--out", out, "--epochs", "2",
          *TINY, "strategy.probe_epochs=2", "--device", "cuda")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"] == "cuda" and meta["precision"] in ("bfloat16", "float16")
    assert all(h["train_loss"] == h["train_loss"] for h in read_history(out))  # no NaN
    pred = json.loads(graft("predict", out, small_csv.read_text().splitlines()[1].split(",")[0],
                            "--json").stdout)
    assert pred[0]["label"] in ("ants", "bees")
