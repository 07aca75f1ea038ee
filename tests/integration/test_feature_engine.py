"""train.feature_engine=onnx: the frozen backbone exported once into the cache, checked against
torch, and the cached probe trained on ONNX Runtime's features matches the torch one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import TINY, graft

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_engine_matches_torch(small_csv: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))  # a first export
    args = ["train", "--data", small_csv, "--strategy", "linear_probe", "--epochs", "5", *TINY,
            "--no-audit"]
    graft(*args, "--out", tmp_path / "ort", "train.feature_engine=onnx")
    graft(*args, "--out", tmp_path / "pt", "train.feature_engine=torch")
    ort = json.loads((tmp_path / "ort" / "meta.json").read_text())["feature_engine"]
    pt = json.loads((tmp_path / "pt" / "meta.json").read_text())["feature_engine"]
    assert ort["engine"].startswith("onnxruntime") and pt["engine"].startswith("torch")
    assert ort["parity_max_abs"] <= 1e-4 and ort["export_s"] > 0 and ort["threads"] == 1
    assert ort["exporter"] == "torchscript"  # the fast exporter traces this backbone
    assert Path(ort["file"]).is_file() and Path(ort["file"]).parent.name == "engines"
    m_ort = json.loads((tmp_path / "ort" / "metrics.json").read_text())
    m_pt = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    for split in ("train", "val"):
        assert m_ort[split]["accuracy"] == m_pt[split]["accuracy"]
        assert m_ort[split]["loss"] == pytest.approx(m_pt[split]["loss"], abs=1e-4)
    # an engine exported after the torch features were cached: auto reads those features
    # instead of extracting again (a second probe on the same data hits the cache)
    for f in (tmp_path / "cache" / "features").glob("*.safetensors"):
        f.unlink()
    graft(*args, "--out", tmp_path / "pt2", "train.feature_engine=torch")
    proc = graft(*args, "--out", tmp_path / "auto")
    assert proc.stderr.count("from the disk cache") >= 2, proc.stderr
    m_auto = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert m_auto["val"]["accuracy"] == m_pt["val"]["accuracy"]
