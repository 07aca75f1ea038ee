"""``--model auto`` and multi-backbone models on real photos (24 train + 12 val ants and bees)
with the built-in pretrained backbones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import graft

pytestmark = pytest.mark.integration


def test_model_auto_ranks_every_builtin_and_trains_the_winner(small_csv: Path,
                                                              tmp_path: Path) -> None:
    from graftkit.modalities import get

    out = tmp_path / "run"
    printed = graft("train", "--data", small_csv, "--model", "auto", "--out", out,
                    "train.threads=2", "report.top_losses=0").stderr
    sel = json.loads((out / "model_selection.json").read_text())
    builtins = get("image").auto_candidates()
    assert "dinov2_vits14" in builtins and len(builtins) == 5
    singles = [c for c in sel["candidates"] if len(c["parts"]) == 1]
    assert sorted(c["name"] for c in singles) == sorted(builtins) and sel["skipped"] == []
    assert any(len(c["parts"]) == 3 for c in sel["candidates"])  # the best three, together
    assert sel["candidates"][0]["name"] == sel["chosen"]
    for c in sel["candidates"]:
        assert 0.0 <= c["cv_accuracy"] <= 1.0 and c["seconds"] > 0 and c["num_features"] > 0
    # pretrained features tell ants from bees, even from 24 photos
    assert max(c["cv_accuracy"] for c in singles) >= 0.75, sel
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["name"] == sel["chosen"] and meta["model_selection"]["chosen"] == (
        sel["chosen"])
    assert "model selection" in meta["timings"]
    # the saved config names the winner: the run reproduces (and resumes) without re-ranking
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name"] == sel["chosen"]
    if "+" in sel["chosen"]:
        assert [p["name"] for p in meta["model"]["parts"]] == sel["chosen"].split("+")
    assert f"chosen: {sel['chosen']}" in " ".join(printed.split())
    (report_dir,) = (out / "eval").iterdir()
    report = (report_dir / "report.html").read_text()
    assert 'id="selection"' in report
    assert all(f'data-key="selection.{c["name"]}"' in report for c in sel["candidates"])


def test_a_two_backbone_probe_exports_and_predicts_like_the_run(small_csv: Path,
                                                                tmp_path: Path) -> None:
    """efficientnet_lite0 + mobilenet_v2: one head on both backbones' features. The run reloads
    from its directory (meta.json's parts), its ONNX bundle passes the parity check, and the
    torch-free predictor gives the run's answers."""
    from graftkit import Run
    from graftkit.export import BundlePredictor, export_run

    out = tmp_path / "run"
    graft("train", "--data", small_csv, "--model", "efficientnet_lite0+mobilenet_v2",
          "--epochs", "5", "--out", out, "train.threads=2", "report.enabled=false")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["arch"] == "tf_efficientnet_lite0+mobilenetv2_100"
    assert [p["num_features"] for p in meta["model"]["parts"]] == [1280, 1280]
    assert meta["model"]["num_features"] == 2560
    assert meta["preprocessing"]["mean"] == [0.0, 0.0, 0.0]  # each part normalises in-graph
    val = json.loads((out / "metrics.json").read_text())["val"]
    assert val["accuracy"] >= 0.75, val  # 12 val photos; two pretrained backbones

    b = export_run(out, "onnx", tmp_path / "bundle")
    p = b["parity"]
    assert p["passed"] and p["max_abs_diff"] <= 1e-4, p
    images = [ln.split(",")[0] for ln in small_csv.read_text().splitlines()[1:]
              if ln.endswith(",val")]
    want = Run(out).predict(images, topk=2)
    got = BundlePredictor(tmp_path / "bundle").predict(images, topk=2)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["prob"] - w["prob"]) for g, w in zip(got, want)) <= 1e-4
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "one head on 2 backbones' concatenated features" in card
    assert "weights of `efficientnet_lite0`: built-in offline" in card
    assert "weights of `mobilenet_v2`: built-in offline" in card
