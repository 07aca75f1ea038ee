"""Multi-label runs piece by piece: the ``labels`` column and its targets, the split, the losses,
the calibration (temperature and per-label thresholds), the analysis, the prediction record and
the config checks. The metric arithmetic itself: test_multilabel_metrics.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graftkit.config import build_config
from graftkit.errors import ConfigError, DataError
from graftkit.launch import resolve_inputs, validate


def _manifest(tmp_path: Path, rows: list[tuple[str, str]], column: str = "labels") -> Path:
    from PIL import Image

    f = tmp_path / "m.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", column, "split"])
        for i, (labels, split) in enumerate(rows):
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(tmp_path / f"{i}.png")
            w.writerow([f"{i}.png", labels, split])
    return f


def test_a_labels_column_makes_the_run_multilabel(tmp_path: Path) -> None:
    f = _manifest(tmp_path, [("a;b", "train"), ("b", "val")])
    cfg = resolve_inputs(build_config(overrides={"data.path": str(f)}))
    assert cfg.task == "multilabel" and cfg.data.label_column == "labels"
    plain = _manifest(tmp_path, [("a", "train"), ("b", "val")], column="label")
    assert resolve_inputs(build_config(overrides={"data.path": str(plain)})).task == \
        "classification"


def test_targets_are_multi_hot_over_the_training_labels(tmp_path: Path) -> None:
    from graftkit.data.sources import discover

    f = _manifest(tmp_path, [("b;a", "train"), ("c", "train"), ("a; c", "val"), ("b", "test")])
    spec = discover(f, task="multilabel", label_column="labels")
    assert spec.classes == ["a", "b", "c"]
    assert spec.splits["train"][0][1] == (1.0, 1.0, 0.0)
    assert spec.splits["val"][0][1] == (1.0, 0.0, 1.0)
    assert spec.report()["counts"]["train"] == {"a": 1, "b": 1, "c": 1}
    bad = _manifest(tmp_path, [("a;b", "train"), ("a;z", "val")])
    with pytest.raises(DataError, match="'z'.*not in the training data"):
        discover(bad, task="multilabel", label_column="labels")
    with pytest.raises(DataError, match="CSV manifest with a 'labels' column"):
        discover(tmp_path, task="multilabel")


def test_the_seeded_split_stratifies_by_each_rows_rarest_label() -> None:
    from graftkit.data.spec import split_keys

    labels = ["a;b", "a", "a;c", "b;a", "a"]
    assert split_keys(labels, "multilabel") == ["b", "a", "c", "b", "a"]
    assert split_keys(labels, "regression") == ["all"] * 5


def test_datasets_batch_targets_as_float_vectors() -> None:
    from graftkit.data.text import TextCollator, TextDataset

    ds = TextDataset([("x y", (1.0, 0.0, 1.0)), ("z", (0.0, 1.0, 0.0))], task="multilabel")
    col = TextCollator(lambda texts, **kw: {"n": len(texts)}, 8)
    _, y = col([ds[0], ds[1]])
    assert y.dtype == torch.float32 and y.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_losses() -> None:
    from graftkit.train.losses import build_loss, loss_task

    torch.manual_seed(0)
    z, y = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    assert torch.isclose(build_loss("bce")(z, y), F.binary_cross_entropy_with_logits(z, y))
    asl = build_loss("asl")
    easy_neg = asl(torch.full((1, 3), -4.0), torch.zeros(1, 3))
    assert easy_neg < 1e-6  # p = 0.018 < the 0.05 margin: an easy negative costs nothing
    hard_neg = asl(torch.full((1, 3), 2.0), torch.zeros(1, 3))
    assert hard_neg > 0.01 and torch.isclose(  # positives as in cross-entropy
        asl(torch.full((1, 3), 1.0), torch.ones(1, 3)),
        F.binary_cross_entropy_with_logits(torch.full((1, 3), 1.0), torch.ones(1, 3)))
    assert [loss_task(n) for n in ("bce", "asl", "mse", "focal")] == [
        "multilabel", "multilabel", "regression", "classification"]


def test_calibration_fits_a_temperature_and_beats_half_with_its_thresholds() -> None:
    from graftkit.evaluate.calibration import Calibration, fit_multilabel_calibration
    from graftkit.evaluate.multilabel import multilabel_metrics

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(400, 3, generator=g) < 0.3).float()
    # over-confident logits whose positives sit below 0 for label 2: 0.5 misses them
    z = 4 * (y - 0.5) + torch.randn(400, 3, generator=g)
    z[:, 2] -= 2.5
    cal, warning = fit_multilabel_calibration(z, y)
    assert warning is None and cal.multilabel and len(cal.thresholds) == 3
    nll = [F.binary_cross_entropy_with_logits(z / t, y) for t in (1.0, cal.temperature)]
    assert nll[1] < nll[0]
    tuned = multilabel_metrics(cal.probs(z).double().numpy(), y.numpy(),
                               np.asarray(cal.thresholds))
    half = multilabel_metrics(torch.sigmoid(z).double().numpy(), y.numpy())
    assert tuned["per_label"]["2"]["f1"] > half["per_label"]["2"]["f1"] + 0.1
    assert cal.thresholds[2] < 0.5
    back = Calibration.from_meta({"calibration": cal.to_dict()})
    assert back.multilabel and back.decide(np.array([[0.9, 0.1, 0.4]])).dtype == bool


def test_analysis_and_the_prediction_record() -> None:
    from graftkit.evaluate.analysis import analyze
    from graftkit.evaluate.calibration import Calibration
    from graftkit.evaluate.multilabel import describe_labels

    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    z = torch.tensor([[3.0, -3, 2], [-2, 2, -3], [2, -1, -2], [-3, -3, 4]])
    cal = Calibration(multilabel=True, thresholds=[0.5, 0.2, 0.5])
    a = analyze(z, y, "multilabel", ["a", "b", "c"], cal, items=list("wxyz"))
    assert a.metrics["n"] == 4 and a.metrics["subset_accuracy"] == 1.0  # b's 0.27 >= 0.2
    assert a.metrics["at_0.5"]["subset_accuracy"] == 0.75
    assert a.correct.tolist() == [True, True, True, True]
    worst = a.top_losses(1)[0]
    assert worst["item"] == "y" and worst["true"] == "a;b" and worst["predicted"] == "a;b"
    rec = describe_labels("x", np.array([0.9, 0.3, 0.1]), ["a", "b", "c"], [0.5, 0.2, 0.5], 2)
    assert rec["labels"] == ["a", "b"] and [t["label"] for t in rec["top"]] == ["a", "b"]
    assert rec["confidence"] == pytest.approx((0.9 + 0.3 + 0.9) / 3)


def test_the_head_starts_at_the_label_prior() -> None:
    from torch import nn

    from graftkit.models.base import label_prior_bias

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(4, 2))

    m = M()
    label_prior_bias(m, [(1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0)])
    assert torch.sigmoid(m.head[-1].bias).tolist() == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("overrides, message", [
    ({"train.mixup": 0.2}, "MixUp/CutMix are for single-label"),
    ({"train.augment": "augmix_jsd"}, "augmix_jsd is for single-label"),
    ({"loss.name": "cross_entropy"}, "does not fit task multilabel.*bce"),
    ({"strategy.name": "prototype"}, "is for single-label classification"),
    ({"loss.class_weights": "auto"}, "class weights are for single-label"),
    ({"calibration.threshold": "f1"}, "tunes one threshold per label"),
    ({"report.tta": 3}, "not multi-label ones yet"),
    ({"data.shots": 2}, "for single-label classification"),
])
def test_multilabel_config_mistakes_fail_early(tmp_path: Path, overrides: dict,
                                               message: str) -> None:
    f = _manifest(tmp_path, [("a;b", "train"), ("b", "val")])
    with pytest.raises(ConfigError, match=message):
        validate(build_config(overrides={"data.path": str(f), **overrides}))
    with pytest.raises(ConfigError, match="bce"):  # a regression loss names the right ones
        validate(build_config(overrides={"data.path": str(f), "loss.name": "mse"}))
