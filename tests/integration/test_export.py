"""graft export on the real linear probe (pretrained efficientnet_lite0, hymenoptera): the ONNX
bundle matches the eager model, and the torch-free predictor matches Run.predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_onnx_export_of_a_real_run(probe_run: Path, tmp_path: Path) -> None:
    from graftkit import Run
    from graftkit.export import BundlePredictor, export_run

    b = export_run(probe_run, "onnx", tmp_path / "bundle")
    p = b["parity"]
    assert p["passed"] and p["max_abs_diff"] <= 1e-4, p
    assert p["n"] == 32 and p["inputs"] == "32 val images of the run's data"
    assert p["labels_agree"] == 32 and p["preprocessing_max_abs_diff"] <= 1e-6

    source = Path(json.loads((probe_run / "meta.json").read_text())["data"]["source"])
    images = [f for cls in ("ants", "bees") for f in sorted((source / "val" / cls).glob("*"))[:10]]
    want = Run(probe_run).predict(images, topk=2)
    got = BundlePredictor(tmp_path / "bundle").predict(images, topk=2)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert {w["label"] for w in want} == {"ants", "bees"}
    for g, w in zip(got, want):
        assert g["input"] == w["input"] and abs(g["prob"] - w["prob"]) <= 1e-4
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]
        assert all(abs(a["prob"] - b["prob"]) <= 1e-4 for a, b in zip(g["top"], w["top"]))

    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    val = json.loads((probe_run / "metrics.json").read_text())["val"]
    assert f"{val['accuracy']:.4f}" in card and "efficientnet_lite0" in card
    assert f"| val | {val['n']} |" in card
