"""``--model auto`` (train/select.py) and multi-backbone models (models/vision.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from graftkit.config import build_config
from graftkit.errors import ConfigError, GraftError
from graftkit.launch import validate
from graftkit.models.vision import CombinedAdapter, create_model, parts_of, rebuild_model
from graftkit.train import select


def _features(labels: np.ndarray, noise: float, seed: int) -> torch.Tensor:
    """Backbone-like features: a one-hot code of ``labels`` (scaled) beside 6 noise dimensions."""
    rng = np.random.default_rng(seed)
    code = np.eye(4)[labels.astype(int)] * 3.0
    x = np.concatenate([code, rng.normal(0, 1, (len(labels), 6))], 1)
    return torch.tensor(x + rng.normal(0, noise, x.shape), dtype=torch.float32)


def _four_classes(n: int = 120) -> tuple[np.ndarray, torch.Tensor]:
    y = np.arange(n) % 4
    return y, torch.tensor(y)


def test_the_separable_backbone_wins_and_the_ranking_is_written(tmp_path: Path) -> None:
    y, yt = _four_classes()
    feats = {"good": _features(y, 0.1, 0), "bad": _features(np.zeros(len(y)), 0.1, 1)}

    def extract(name: str) -> tuple:
        if name == "missing":
            raise GraftError("built-in model 'missing' needs its weights package")
        return (feats[name], yt), lambda: (feats[name][:40], yt[:40])

    lines: list[str] = []
    chosen, report = select.select(["bad", "missing", "good"], extract, False, 0, None,
                                   tmp_path, lines.append)
    assert chosen == "good"
    rows = {r["name"]: r for r in report["candidates"]}
    assert set(rows) == {"good", "bad"}
    assert rows["good"]["cv_accuracy"] > 0.95 and rows["bad"]["cv_accuracy"] < 0.5
    assert rows["good"]["val_accuracy"] > 0.95 and rows["good"]["num_features"] == 10
    assert report["skipped"] == [{"name": "missing", "reason": "built-in model 'missing' needs "
                                  "its weights package"}]
    saved = json.loads((tmp_path / select.FILE).read_text())
    assert saved["chosen"] == "good" and [r["name"] for r in saved["candidates"]] == ["good", "bad"]
    assert any("good: cv accuracy" in ln for ln in lines)


def test_complementary_backbones_are_combined(tmp_path: Path) -> None:
    """Four classes; one backbone sees bit 0 of the class, the other bit 1: alone each is at
    about 0.5, their concatenated features separate all four."""
    y, yt = _four_classes(160)
    feats = {"low": _features(y % 2, 0.05, 2),
             "high": _features(y // 2, 0.05, 3),
             "noise": _features(np.zeros(len(y)), 0.05, 4)}
    chosen, report = select.select(list(feats), lambda n: ((feats[n], yt), lambda: (None, None)),
                                   True, 0, None, tmp_path, lambda s: None)
    rows = {r["name"]: r for r in report["candidates"]}
    assert set(chosen.split("+")) == {"low", "high"}, report
    assert rows[chosen]["cv_accuracy"] > 0.95
    assert rows["low"]["cv_accuracy"] < 0.6 and rows["high"]["cv_accuracy"] < 0.6
    assert rows[chosen]["val_accuracy"] is None  # no val split: nothing to show
    assert "low+high+noise" in rows or "high+low+noise" in rows  # the best three together


def test_val_is_extracted_only_for_backbones_that_can_still_win(tmp_path: Path) -> None:
    """Three good backbones first, then two that cannot reach the best three: their val split
    is never extracted (it would only be shown), the good ones' is."""
    y, yt = _four_classes()
    noise = {"a": 0.1, "b": 0.2, "c": 0.3, "weak": 3.0, "weaker": 5.0}
    asked: list[str] = []

    def extract(name: str) -> tuple:
        x = _features(y, noise[name], 7)

        def val() -> tuple:
            asked.append(name)
            return x[:40], yt[:40]

        return (x, yt), val

    _, report = select.select(list(noise), extract, True, 0, None, tmp_path, lambda s: None)
    rows = {r["name"]: r for r in report["candidates"]}
    assert asked == ["a", "b", "c"]
    assert rows["weak"]["val_accuracy"] is None and rows["weaker"]["val_accuracy"] is None
    assert all(rows[n]["val_accuracy"] is not None for n in ("a", "b", "c", "a+b", "a+b+c"))


def test_budget_skips_what_it_cannot_afford(tmp_path: Path) -> None:
    y, yt = _four_classes()

    def slow(name: str) -> tuple:
        time.sleep(0.3)
        return (_features(y, 0.1, 5), yt), lambda: (None, None)

    chosen, report = select.select(["a", "b", "c"], slow, True, 0, 0.2, tmp_path, lambda s: None)
    assert chosen == "a" and [r["name"] for r in report["candidates"]] == ["a"]
    assert [s["name"] for s in report["skipped"]] == ["b", "c"]
    assert all(s["reason"].startswith("budget:") for s in report["skipped"])


def test_nothing_scored_is_one_error(tmp_path: Path) -> None:
    def fail(name: str) -> tuple:
        raise GraftError(f"{name} is not installed")

    with pytest.raises(GraftError, match="no backbone could be scored: a: a is not installed"):
        select.select(["a"], fail, False, 0, None, tmp_path, lambda s: None)


def _cfg(tmp_path: Path, **over: object):  # noqa: ANN202
    data = tmp_path / "d"
    for c in ("x", "y"):
        (data / c).mkdir(parents=True, exist_ok=True)
    return build_config(None, {"data.path": str(data), **over})


def test_auto_and_combination_mistakes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights.*auto"):
        validate(_cfg(tmp_path, **{"model.name": "auto", "model.weights": "w.pth"}))
    with pytest.raises(ConfigError, match="model.image_size"):
        validate(_cfg(tmp_path, **{"model.name": "auto", "model.image_size": 320}))
    with pytest.raises(ConfigError, match="model.budget"):
        validate(_cfg(tmp_path, **{"model.budget": 30}))
    with pytest.raises(ConfigError, match="regression"):
        validate(_cfg(tmp_path, **{"model.name": "auto", "task": "regression"}))
    with pytest.raises(ConfigError, match="names a backbone twice"):
        validate(_cfg(tmp_path, **{"model.name": "mobilenet_v2+mobilenet_v2"}))
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        validate(_cfg(tmp_path, **{"model.name": "mobilenet_v2+nope"}))
    texts = tmp_path / "t.csv"
    texts.write_text("text,label\n" + "".join(f"some words {i},{i % 2}\n" for i in range(8)))
    with pytest.raises(ConfigError, match="one head on several backbones is for images"):
        validate(build_config(None, {"data.path": str(texts),
                                     "model.name": "all-MiniLM-L6-v2+paraphrase-MiniLM-L3-v2"}))
    with pytest.raises(ConfigError, match="empty backbone"):
        parts_of("a++b")


def test_combined_features_are_each_parts_own() -> None:
    """Parts at the input's size: the combination's features are exactly each part's features
    of the image normalised its own way, concatenated in order."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet+test_convnext", 3, pretrained=False).eval()
    assert isinstance(model, CombinedAdapter) and model.num_features == 256 + 64
    dc = model.data_config
    assert dc.input_size == 160 and dc.mean == (0.0, 0.0, 0.0) and dc.std == (1.0, 1.0, 1.0)
    x = torch.rand(2, 3, 160, 160)
    eff, conv = model.backbone.parts
    mean0, std0 = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        want = torch.cat([eff((x - mean0.view(1, 3, 1, 1)) / std0.view(1, 3, 1, 1)),
                          conv((x - 0.5) / 0.5)], 1)
        assert torch.allclose(model.features(x), want, atol=1e-5)
    # blocks by depth from the output: the last group opens the top of both parts
    blocks = model.blocks()
    last = blocks[-1]
    assert any(n.startswith("backbone.parts.0.") for n in last)
    assert any(n.startswith("backbone.parts.1.") for n in last)
    params = dict(model.named_parameters())
    assert all(n in params for group in blocks for n in group)


def test_a_combination_rebuilds_from_its_meta_with_a_smaller_part_resized() -> None:
    torch.manual_seed(0)
    model = create_model("test_efficientnet+test_vit", 2, pretrained=False, dropout=0.1).eval()
    parts = model.parts_meta()
    assert [p["name"] for p in parts] == ["test_efficientnet", "test_vit"]
    assert [p["num_features"] for p in parts] == [256, 64]
    parts = json.loads(json.dumps(parts))  # as meta.json holds them
    parts[1]["preprocessing"]["input_size"] = 96  # a ViT made for 96 px reads a resized input
    first = rebuild_model("test_efficientnet+test_vit", 2, 0.1, model.data_config, parts).eval()
    second = rebuild_model("test_efficientnet+test_vit", 2, 0.1, model.data_config, parts).eval()
    assert first.backbone.parts[1].patch_embed.img_size == (96, 96)
    second.load_state_dict(first.state_dict(), strict=True)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
        vit_in = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear",
                                                 antialias=True)
        assert torch.allclose(first.features(x)[:, 256:],
                              first.backbone.parts[1]((vit_in - 0.5) / 0.5), atol=1e-5)
    with pytest.raises(GraftError, match="model.parts"):
        rebuild_model("test_efficientnet+test_vit", 2, 0.1, model.data_config, None)


def test_auto_tries_every_builtin_of_each_modality_once() -> None:
    from graftkit.modalities import get
    from graftkit.models.audio import AUDIO_MODELS
    from graftkit.models.text import TEXT_MODELS
    from graftkit.models.vision import MODELS

    for modality, reg in (("image", MODELS), ("text", TEXT_MODELS), ("audio", AUDIO_MODELS)):
        names = get(modality).auto_candidates()
        assert sorted(names) == sorted(reg.names()), modality
    assert get("image").auto_candidates()[-1] == "dinov2_vits14"  # the dearest last


def test_the_ranking_file_belongs_to_the_run_directory() -> None:
    """--overwrite replaces a folder holding only a run's own files: the ranking is one."""
    from graftkit import run as rd

    assert select.FILE == rd.MODEL_SELECTION and select.FILE in rd.OWN
