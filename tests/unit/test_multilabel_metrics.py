"""Multi-label metrics match hand-computed values; tuned thresholds beat 0.5 where they should."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from graftkit.evaluate.multilabel import (
    confused_pairs,
    decide,
    multilabel_ece,
    multilabel_metrics,
    reliability_per_label,
    tune_thresholds,
)

# 4 examples x 3 labels; at 0.5 the decisions are [[1,0,1], [0,1,0], [1,1,0], [0,0,0]]
PROBS = np.array([[0.9, 0.2, 0.6],
                  [0.4, 0.7, 0.1],
                  [0.8, 0.6, 0.3],
                  [0.1, 0.3, 0.2]])
TARGETS = np.array([[1, 0, 1],
                    [1, 1, 0],
                    [0, 1, 0],
                    [0, 0, 0]])


def test_decide_is_probs_at_or_above_threshold() -> None:
    assert decide(PROBS).tolist() == [[True, False, True], [False, True, False],
                                      [True, True, False], [False, False, False]]
    assert decide(PROBS, np.array([0.9, 0.5, 0.5]))[:, 0].tolist() == [True, False, False, False]


def test_metrics_by_hand() -> None:
    m = multilabel_metrics(PROBS, TARGETS, classes=["a", "b", "c"])
    # label a: TP 1, FP 1, FN 1; b and c are perfect -> micro TP 4, FP 1, FN 1
    assert m["micro_precision"] == pytest.approx(0.8)
    assert m["micro_recall"] == pytest.approx(0.8)
    assert m["micro_f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((0.5 + 1 + 1) / 3)
    # per example F1: 1, 2/3, 2/3, and 0 for the empty/empty row (zero_division=0)
    assert m["samples_f1"] == pytest.approx(7 / 12)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["label_cardinality"] == pytest.approx(1.25)
    assert m["predicted_cardinality"] == pytest.approx(1.25)
    # AP of a: ranking +, -, +, - -> 0.5 * 1 + 0.5 * 2/3; b and c rank their positives first
    assert m["per_label"]["a"]["ap"] == pytest.approx(5 / 6)
    assert m["mAP"] == pytest.approx((5 / 6 + 1 + 1) / 3)
    assert m["per_label"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                                 "ap": 5 / 6, "support": 2, "threshold": 0.5})
    assert m["per_label"]["c"]["support"] == 1
    json.dumps(m)  # plain python all the way down
    assert type(m["per_label"]["a"]["support"]) is int


def test_metrics_default_names_and_custom_thresholds() -> None:
    m = multilabel_metrics(PROBS, TARGETS, thresholds=np.array([0.85, 0.5, 0.5]))
    assert list(m["per_label"]) == ["0", "1", "2"]
    assert m["per_label"]["0"]["threshold"] == 0.85
    assert m["per_label"]["0"]["precision"] == 1.0
    assert m["per_label"]["0"]["recall"] == 0.5


def test_map_is_sklearn_mean_over_labels_with_positives() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((200, 5))
    targets = (rng.random((200, 5)) < probs).astype(int)
    targets[:, 3] = 0  # no positives: no AP, left out of the mean
    m = multilabel_metrics(probs, targets)
    keep = [0, 1, 2, 4]
    expected = np.mean([skm.average_precision_score(targets[:, c], probs[:, c]) for c in keep])
    assert m["mAP"] == pytest.approx(expected)
    assert m["mAP"] == pytest.approx(skm.average_precision_score(targets[:, keep],
                                                                 probs[:, keep]))
    assert m["per_label"]["3"]["ap"] is None
    assert m["micro_f1"] == pytest.approx(skm.f1_score(targets, probs >= 0.5, average="micro"))


def test_map_is_none_without_any_positive() -> None:
    assert multilabel_metrics(PROBS, np.zeros_like(TARGETS))["mAP"] is None


def test_tuned_thresholds_beat_half() -> None:
    rng = np.random.default_rng(1)
    n = 40
    y = np.arange(n) % 2
    low = np.where(y == 1, rng.uniform(0.3, 0.45, n), rng.uniform(0.1, 0.25, n))
    probs = np.stack([low, rng.uniform(0, 1, n)], 1)
    targets = np.stack([y, np.zeros(n, dtype=int)], 1)  # label 1 has no positives
    th = tune_thresholds(probs, targets)
    assert th.shape == (2,)
    assert 0.25 < th[0] < 0.3
    assert th[1] == 0.5
    at_half = multilabel_metrics(probs, targets)["per_label"]["0"]["f1"]
    tuned = multilabel_metrics(probs, targets, thresholds=th)["per_label"]["0"]["f1"]
    assert at_half == 0.0
    assert tuned == 1.0


def test_tuned_threshold_is_the_exact_optimum() -> None:
    rng = np.random.default_rng(2)
    probs = rng.random((300, 4))
    targets = (rng.random((300, 4)) < probs ** 2).astype(int)
    th = tune_thresholds(probs, targets)
    for c in range(4):
        y, p = targets[:, c] == 1, probs[:, c]
        pred = p[None, :] >= p[:, None]  # every observed value as a threshold, one per row
        best = (2 * (pred & y).sum(1) / (pred.sum(1) + y.sum())).max()
        assert skm.f1_score(y, p >= th[c]) == pytest.approx(best)


def test_tuning_ties_go_toward_half() -> None:
    probs = np.array([[0.9], [0.8], [0.1], [0.05]])
    targets = np.array([[1], [1], [0], [0]])
    assert tune_thresholds(probs, targets)[0] == 0.5  # anything in (0.1, 0.8] is perfect
    # every grid point is perfect: the nearest to 0.5 wins, the lower one on an exact tie
    assert tune_thresholds(probs, targets, grid=np.array([0.2, 0.4, 0.7]))[0] == 0.4
    assert tune_thresholds(probs, targets, grid=np.array([0.3, 0.7]))[0] == 0.3


def test_tune_rejects_unknown_metric_and_bad_grid() -> None:
    with pytest.raises(ValueError, match="metric"):
        tune_thresholds(PROBS, TARGETS, metric="accuracy")
    with pytest.raises(ValueError, match="grid"):
        tune_thresholds(PROBS, TARGETS, grid=np.array([]))


def test_confused_pairs_counts() -> None:
    classes = ["cat", "dog", "fox"]
    targets = np.array([[1, 0, 0],   # predicted cat, dog   -> (cat, dog)
                        [1, 0, 0],   # predicted dog        -> (cat, dog)
                        [1, 0, 1],   # predicted dog, fox   -> (cat, dog), (fox, dog)
                        [0, 1, 0],   # predicted cat, fox   -> (dog, cat), (dog, fox)
                        [0, 0, 0]])  # predicted cat: no true label, nothing counted
    probs = np.array([[0.9, 0.8, 0.1],
                      [0.2, 0.7, 0.1],
                      [0.3, 0.6, 0.9],
                      [0.6, 0.4, 0.55],
                      [0.7, 0.1, 0.1]])
    pairs = confused_pairs(probs, targets, np.full(3, 0.5), classes)
    assert pairs == [{"true": "cat", "predicted": "dog", "count": 3},
                     {"true": "dog", "predicted": "cat", "count": 1},
                     {"true": "dog", "predicted": "fox", "count": 1},
                     {"true": "fox", "predicted": "dog", "count": 1}]
    assert confused_pairs(probs, targets, np.full(3, 0.5), classes, k=2) == pairs[:2]
    assert confused_pairs(probs, targets, np.full(3, 0.95), classes) == []


def test_ece_zero_when_calibrated_positive_otherwise() -> None:
    # label 0: 0.25 with 1 of 4 positive, 0.75 with 3 of 4 -> calibrated
    # label 1: 0.85 everywhere with half positive -> gap 0.35
    probs = np.array([[0.25, 0.85]] * 4 + [[0.75, 0.85]] * 4)
    targets = np.array([[1, 1], [0, 0], [0, 1], [0, 0], [1, 1], [1, 0], [1, 1], [0, 0]])
    r = reliability_per_label(probs, targets, classes=["ok", "off"])
    assert r["ok"]["ece"] == pytest.approx(0.0)
    assert r["off"]["ece"] == pytest.approx(0.35)
    assert r["off"]["mce"] == pytest.approx(0.35)
    assert r["ok"]["count"] == [0, 0, 4, 0, 0, 0, 0, 4, 0, 0]
    assert r["ok"]["mean_prob"][2] == pytest.approx(0.25)
    assert r["ok"]["frac_positive"][7] == pytest.approx(0.75)
    assert r["ok"]["mean_prob"][0] is None
    assert multilabel_ece(probs, targets) == pytest.approx(0.175)


def test_reliability_bin_edges() -> None:
    # bins are (lo, hi]; 0 falls in the first bin, 0.3 in (0.2, 0.3], 1 in the last
    probs = np.array([[0.0], [0.3], [1.0]])
    r = reliability_per_label(probs, np.array([[0], [0], [1]]), bins=10)
    assert r["0"]["count"] == [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    assert r["0"]["ece"] == pytest.approx(0.3 / 3)


@pytest.mark.parametrize("call", [
    lambda: multilabel_metrics(PROBS, TARGETS[:3]),
    lambda: multilabel_metrics(PROBS, TARGETS[:, :2]),
    lambda: multilabel_metrics(PROBS, TARGETS, thresholds=np.full(2, 0.5)),
    lambda: multilabel_metrics(PROBS, TARGETS, classes=["a", "b"]),
    lambda: multilabel_metrics(PROBS[0], TARGETS[0]),
    lambda: multilabel_metrics(PROBS, TARGETS * 2),
    lambda: multilabel_metrics(PROBS * 3, TARGETS),
    lambda: decide(PROBS, np.full(4, 0.5)),
    lambda: tune_thresholds(PROBS, TARGETS.T),
    lambda: confused_pairs(PROBS, TARGETS, np.full(3, 0.5), ["a"]),
    lambda: reliability_per_label(PROBS, TARGETS[:2]),
    lambda: reliability_per_label(PROBS, TARGETS, bins=0),
    lambda: multilabel_ece(PROBS[:, :2], TARGETS),
])
def test_bad_shapes_raise(call) -> None:
    with pytest.raises(ValueError):
        call()
