"""Metrics agree with scikit-learn; calibration fixes confidence without touching accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from graftkit.evaluate.analysis import analyze
from graftkit.evaluate.calibration import (
    Calibration,
    choose_threshold,
    fit_calibration,
    fit_temperature,
)
from graftkit.evaluate.metrics import calibration_errors, classification_metrics, confused_pairs


def _overconfident(n: int = 600, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a ~70%-accurate classifier, scaled up 4x so it is far too sure of itself."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), y] += 1.5
    return logits * 4, y


def _ece_reference(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """Guo et al.'s definition, written out, to cross-check the library's number."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece, mce = 0.0, 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs((pred[m] == y[m]).mean() - conf[m].mean())
            ece += m.mean() * gap
            mce = max(mce, gap)
    return ece, mce


def test_classification_metrics_equal_sklearn() -> None:
    logits, y = _overconfident()
    probs, t = logits.double().softmax(-1).numpy(), y.numpy()
    pred = probs.argmax(1)
    m = classification_metrics(probs, t, ["a", "b", "c", "d"], topk=2)
    assert m["accuracy"] == skm.accuracy_score(t, pred)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(t, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(t, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(t, pred, average="weighted"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(t, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(t, probs, multi_class="ovr"))
    onehot = np.eye(4)[t]
    assert m["average_precision"] == pytest.approx(
        skm.average_precision_score(onehot, probs, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(t, probs), rel=1e-6)
    assert m["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    assert m["top2_accuracy"] == skm.top_k_accuracy_score(t, probs, k=2)
    assert m["confusion_matrix"] == skm.confusion_matrix(t, pred).tolist()
    assert m["per_class"]["c"]["support"] == int((t == 2).sum())
    assert m["weighted_precision"] == pytest.approx(skm.precision_score(t, pred,
                                                                        average="weighted"))
    assert m["weighted_recall"] == pytest.approx(skm.recall_score(t, pred, average="weighted"))
    for i, c in enumerate("abcd"):  # one vectorised call, each class's own binary score
        assert m["per_class"][c]["roc_auc"] == pytest.approx(skm.roc_auc_score(t == i,
                                                                               probs[:, i]))
        assert m["per_class"][c]["average_precision"] == pytest.approx(
            skm.average_precision_score(t == i, probs[:, i]))
    ece, mce = _ece_reference(probs, t)
    assert m["ece"] == pytest.approx(ece, abs=1e-6) and m["mce"] == pytest.approx(mce, abs=1e-6)


def test_without_ranking_only_the_per_class_ranking_scores_are_left_out() -> None:
    logits, y = _overconfident()
    probs, t = logits.double().softmax(-1).numpy(), y.numpy()
    full = classification_metrics(probs, t, ["a", "b", "c", "d"], topk=2)
    light = classification_metrics(probs, t, ["a", "b", "c", "d"], topk=2, ranking=False)
    assert light["roc_auc"] is None and light["average_precision"] is None
    assert all(v["roc_auc"] is None for v in light["per_class"].values())
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "log_loss", "brier",
              "ece", "top2_accuracy", "confusion_matrix"):
        assert light[k] == full[k], k


def test_binary_auc_is_the_positive_class_and_absent_classes_are_none() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    t = np.array([0, 1, 1, 0])
    m = classification_metrics(probs, t, ["neg", "pos"])
    assert m["roc_auc"] == skm.roc_auc_score(t, probs[:, 1]) == 1.0
    assert m["brier"] == pytest.approx(skm.brier_score_loss(t, probs[:, 1]))
    three = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    m3 = classification_metrics(three, np.array([0, 1]), ["x", "y", "z"])
    assert m3["per_class"]["z"]["roc_auc"] is None  # no example of z: undefined, not 0
    assert m3["roc_auc"] == 1.0
    one = classification_metrics(three, np.array([0, 0]), ["x", "y", "z"])  # a single class
    assert one["roc_auc"] is None and one["average_precision"] is None


def test_temperature_scaling_lowers_ece_and_keeps_accuracy() -> None:
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t > 1.5  # overconfident logits get softened
    before, after = analyze(logits, y, "classification", list("abcd")), analyze(
        logits, y, "classification", list("abcd"), Calibration(temperature=t))
    assert after.metrics["accuracy"] == before.metrics["accuracy"]
    assert after.metrics["confusion_matrix"] == before.metrics["confusion_matrix"]
    assert after.metrics["ece"] < 0.5 * before.metrics["ece"]
    assert after.metrics["log_loss"] < before.metrics["log_loss"]
    assert after.metrics["uncalibrated"]["ece"] == pytest.approx(before.metrics["ece"])
    # the fitted T is the NLL minimum: nudging it either way does not help
    nll = [float(torch.nn.functional.cross_entropy(logits / (t * f), y)) for f in (0.9, 1, 1.1)]
    assert nll[1] <= min(nll[0], nll[2])


def test_fitted_temperature_never_raises_validation_ece() -> None:
    shrunk = 0
    for seed in range(12):  # small, noisy splits are where the NLL optimum can raise ECE
        logits, y = _overconfident(n=60, k=2, seed=seed)
        logits = logits / 3
        cal, _ = fit_calibration(logits, y, ["a", "b"])
        before = calibration_errors(logits.double().softmax(-1).numpy(), y.numpy())["ece"]
        after = calibration_errors(cal.probs(logits).double().numpy(), y.numpy())["ece"]
        assert after <= before
        lo, hi = sorted([1.0, cal.temperature_nll])
        assert lo - 1e-9 <= cal.temperature <= hi + 1e-9  # on the way from 1 to the NLL optimum
        shrunk += cal.temperature != cal.temperature_nll
    assert shrunk  # these seeds include cases where the NLL optimum alone would raise ECE


def test_threshold_criteria() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.35 + rng.uniform(0, 0.65, 400), 0, 1)
    thr, got = choose_threshold(p, y, "recall", 0.95)
    assert got["reached"] and skm.recall_score(y, p >= thr) >= 0.95
    thr_p, got_p = choose_threshold(p, y, "precision", 0.9)
    assert got_p["reached"] and skm.precision_score(y, p >= thr_p) >= 0.9
    assert thr_p > thr  # precision wants a stricter threshold than high recall
    thr_f, got_f = choose_threshold(p, y, "f1")
    assert skm.f1_score(y, p >= thr_f) == pytest.approx(got_f["f1"])
    best_fixed = max(skm.f1_score(y, p >= c) for c in np.linspace(0.05, 0.95, 91))
    assert got_f["f1"] >= best_fixed - 1e-9
    _, miss = choose_threshold(np.full(10, 0.5), np.array([0, 1] * 5), "precision", 0.99)
    assert not miss["reached"]


def test_threshold_decides_predictions() -> None:
    logits = torch.tensor([[0.0, -0.5], [0.0, 0.5], [0.0, -2.0]])
    y = torch.tensor([1, 1, 0])
    cal, warning = fit_calibration(logits, y, ["neg", "pos"], temperature=False,
                                   threshold="recall", target=1.0)
    assert warning is None and cal.threshold is not None and cal.positive_class == "pos"
    assert cal.decide(cal.probs(logits).numpy()).tolist() == [1, 1, 0]  # argmax says [0, 1, 0]
    with pytest.raises(ValueError):
        fit_calibration(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), list("abc"),
                        threshold="f1")


def test_a_threshold_needs_both_classes_in_validation() -> None:
    logits = torch.tensor([[0.0, -0.5], [0.0, 0.5], [0.0, -2.0]])
    for y, word in ((torch.tensor([0, 0, 0]), "no"), (torch.tensor([1, 1, 1]), "only")):
        cal, warning = fit_calibration(logits, y, ["neg", "pos"], threshold="f1")
        assert cal.threshold is None and f"validation has {word} 'pos' examples" in warning


def test_classes_absent_from_the_data_are_left_out_of_macro_averages() -> None:
    """Evaluating on data that holds 2 of a run's 10 classes: a perfect model scores 1."""
    probs = np.eye(10)[[0, 0, 1, 1]]
    m = classification_metrics(probs, np.array([0, 0, 1, 1]), [str(i) for i in range(10)])
    assert m["macro_f1"] == m["macro_recall"] == m["macro_precision"] == 1.0
    assert m["per_class"]["5"]["recall"] is None and m["per_class"]["5"]["support"] == 0
    # a class predicted but absent still counts (its precision is 0), as in sklearn
    wrong = classification_metrics(np.eye(10)[[0, 0, 1, 5]], np.array([0, 0, 1, 1]),
                                   [str(i) for i in range(10)])
    assert wrong["macro_f1"] == pytest.approx(skm.f1_score([0, 0, 1, 1], [0, 0, 1, 5],
                                                           average="macro"))
    from graftkit.evaluate.metrics import regression_metrics
    from graftkit.evaluate.multilabel import multilabel_metrics

    assert np.isnan(regression_metrics(np.array([1.0, 2.0]), np.array([3.0, 3.0]))["r2"])
    ml = multilabel_metrics(np.array([[.9, .1], [.2, .1], [.8, .2]]),
                            np.array([[1, 0], [0, 0], [1, 0]]))
    assert ml["macro_f1"] == 1.0 and ml["per_label"]["1"]["f1"] is None


def test_confused_pairs_and_ece_of_perfect_predictions() -> None:
    cm = [[5, 2, 0], [0, 4, 3], [1, 0, 6]]
    pairs = confused_pairs(cm, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("b", "c", 3), ("a", "b", 2), ("c", "a", 1)]
    assert pairs[0]["fraction_of_true"] == pytest.approx(3 / 7)
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert calibration_errors(probs, np.array([0, 1, 2, 1])) == {"ece": 0.0, "mce": 0.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_errors_are_torchmetrics(seed: int) -> None:
    """The same numbers as torchmetrics (which graftkit no longer imports: 1.6-2.2 s)."""
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, y = _overconfident(n=500, k=2 + seed, seed=seed)
    probs = logits.softmax(-1).double().numpy()
    probs[:7] = np.eye(probs.shape[1])[y[:7].numpy()]  # confidence exactly 1: its own bin
    got = calibration_errors(probs, y.numpy())
    p, t = torch.as_tensor(probs), y
    for norm, key in (("l1", "ece"), ("max", "mce")):
        want = float(tm.multiclass_calibration_error(p, t, probs.shape[1], n_bins=15, norm=norm))
        assert got[key] == want, (key, got[key], want)


def test_the_reliability_diagram_bins_are_the_ece_bins() -> None:
    """The diagram's bars are the bins the ECE in its title is computed on; a confidence on a
    bin edge (a binary tie at 0.5) lands in the same bin as in the ECE, one of exactly 1 in the
    last bar."""
    from graftkit.evaluate.metrics import ECE_BINS, reliability_bins

    logits, y = _overconfident(n=400, k=3, seed=4)
    probs = logits.softmax(-1).double().numpy()
    conf, correct = probs.max(1), probs.argmax(1) == y.numpy()
    count, mean_conf, acc = reliability_bins(conf, correct)
    assert count.sum() == len(conf) and len(count) == ECE_BINS
    ece = float((np.abs(acc - mean_conf) * count / count.sum()).sum())
    assert ece == pytest.approx(calibration_errors(probs, y.numpy())["ece"], abs=1e-6)
    bounds = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float32)
    conf = np.array([bounds[7].item(), bounds[7].item() - 1e-4, 1.0])  # on an edge, below, 1
    count, _, _ = reliability_bins(conf, np.array([1, 0, 1]))
    want = torch.bucketize(torch.as_tensor(conf, dtype=torch.float32), bounds, right=True) - 1
    assert want.tolist() == [7, 6, ECE_BINS]  # torchmetrics: 1 in a bin of its own ...
    assert count[7] == 1 and count[6] == 1 and count[-1] == 1  # ... here, the last bar
