"""The feature engine's choice without ONNX Runtime installed."""

from __future__ import annotations

import pytest
import torch

from graftkit.errors import GraftError


def test_onnx_engine_without_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.train import engines

    monkeypatch.setattr(engines, "available", lambda: False)
    with pytest.raises(GraftError, match=r"graftkit\[export\]"):
        engines.check("onnx")
    engines.check("auto")  # auto falls back to torch
    assert engines.choose("auto", torch.device("cpu"), None, 10**6, "d", "s") == "torch"
