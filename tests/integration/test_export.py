"""graft export on real runs: the linear probe (pretrained efficientnet_lite0, hymenoptera) and a
text probe (MiniLM-L3, sms_spam). The ONNX bundle matches the eager model, and the torch-free
predictor matches Run.predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import shared_dataset

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


def test_graft_export_of_a_text_run(tmp_path: Path) -> None:
    """`graft export` on a real text run (the built-in MiniLM-L3, a linear probe on sms_spam
    messages): the ONNX bundle passes its parity check, and the torch-free predictor gives the
    run's answers on real messages."""
    import csv

    import graftkit
    from graftkit.export import BundlePredictor

    from .conftest import graft

    src = shared_dataset("sms_spam")
    rows = list(csv.reader((src / "train.csv").open(encoding="utf-8")))[1:]
    take = [r[:2] for c in ("ham", "spam") for r in [x for x in rows if x[1] == c][:25]]
    with (tmp_path / "sms.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *take])
    run = graftkit.finetune(tmp_path / "sms.csv", "paraphrase-MiniLM-L3-v2", "linear_probe",
                            epochs=1, out=tmp_path / "run", quiet=True,
                            overrides={"report.enabled": False})
    printed = graft("export", run.path, "--out", tmp_path / "bundle").stdout
    assert "text_model/tokenizer.json" in printed and "on 10 val texts" in printed, printed
    p = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["parity"]
    assert p["passed"] and p["max_abs_diff"] <= 1e-4 and p["labels_agree"] == 10, p
    assert p["preprocessing_max_abs_diff"] == 0.0
    tests = [r[0] for r in csv.reader((src / "test.csv").open(encoding="utf-8"))][1:41]
    want = run.predict(tests, topk=2)
    got = BundlePredictor(tmp_path / "bundle").predict(tests, topk=2)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["prob"] - w["prob"]) for g, w in zip(got, want)) <= 1e-4
