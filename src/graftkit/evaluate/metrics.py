"""Metrics as pure functions of predictions and targets.

scikit-learn does the arithmetic; the calibration errors are torchmetrics' top-label ECE/MCE,
computed as torchmetrics computes them (its binning, in torch; tested equal to it) without
importing torchmetrics, whose import (its text metrics load transformers) took 1.6-2.2 s of
every ``graft train``. Values that are undefined on the given data (ROC-AUC of a class with no
positives, say) are ``None``, never a silent 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn import metrics as skm

ECE_BINS = 15


def calibration_errors(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS
                       ) -> dict[str, float]:
    """Top-label expected and maximum calibration error over equal-width confidence bins:
    torchmetrics' ``multiclass_calibration_error`` (``norm="l1"`` and ``"max"``), step by step
    (float32 confidences, ``bucketize(right=True)`` on ``linspace(0, 1, n_bins + 1)``, a
    confidence of exactly 1 in a bin of its own)."""
    p, t = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(targets).long()
    conf, pred = p.max(dim=1)
    conf, acc = conf.float(), pred.eq(t).float()
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    idx = torch.bucketize(conf, bounds, right=True) - 1
    count = torch.zeros(len(bounds), dtype=conf.dtype).scatter_add_(0, idx, torch.ones_like(conf))
    conf_bin = torch.nan_to_num(torch.zeros_like(count).scatter_add_(0, idx, conf) / count)
    acc_bin = torch.nan_to_num(torch.zeros_like(count).scatter_add_(0, idx, acc) / count)
    gap = (acc_bin - conf_bin).abs()
    return {"ece": float((gap * (count / count.sum())).sum()), "mce": float(gap.max())}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean confidence and accuracy per equal-width confidence bin, binned as
    :func:`calibration_errors` bins (float32 confidences, a bin holds [lower, upper)), except
    that a confidence of exactly 1 joins the last bin: the reliability diagram's bars."""
    conf = np.asarray(confidence, dtype=np.float32)
    bounds = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    idx = np.clip(np.searchsorted(bounds, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    per = np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf.astype(np.float64), minlength=n_bins) / per
    acc = np.bincount(idx, weights=np.asarray(correct, dtype=np.float64), minlength=n_bins) / per
    return count, mean_conf, acc


def probability_scores(probs: np.ndarray, targets: np.ndarray, n_classes: int
                       ) -> dict[str, float]:
    """Scores of the probabilities themselves (they change with temperature; argmax doesn't)."""
    labels = list(range(n_classes))
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)  # float32 softmax sums drift from 1 by ~1e-7
    clipped = np.clip(probs, 1e-12, 1)
    clipped = clipped / clipped.sum(1, keepdims=True)
    if n_classes == 2:
        brier = skm.brier_score_loss(targets, probs[:, 1], pos_label=1)
    else:
        brier = skm.brier_score_loss(targets, probs, labels=labels)
    return {"log_loss": float(skm.log_loss(targets, clipped, labels=labels)),
            "brier": float(brier), **calibration_errors(probs, targets)}


def _one_vs_rest(probs: np.ndarray, targets: np.ndarray, n_classes: int
                 ) -> tuple[list[float | None], list[float | None]]:
    """Per-class ROC-AUC and average precision; None for a class absent from (or all of) y.

    One sklearn call each over the indicator columns of the classes that have both positives
    and negatives (not one call per class: at 100 classes and 2,000 examples that took 280 ms
    of every validation epoch, sklearn's argument checks mostly)."""
    auc: list[float | None] = [None] * n_classes
    ap: list[float | None] = [None] * n_classes
    y = np.asarray(targets)[:, None] == np.arange(n_classes)
    positives = y.sum(0)
    cols = np.flatnonzero((positives > 0) & (positives < len(y)))  # never just one
    if len(cols):
        scores = np.asarray(probs)[:, cols]
        for c, a, p in zip(cols.tolist(), skm.roc_auc_score(y[:, cols], scores, average=None),
                           skm.average_precision_score(y[:, cols], scores, average=None)):
            auc[c], ap[c] = float(a), float(p)
    return auc, ap


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def classification_metrics(
    probs: np.ndarray, targets: np.ndarray, classes: list[str], topk: int = 5,
    pred: np.ndarray | None = None, ranking: bool = True,
) -> dict:
    """``probs`` (N, K) and integer ``targets`` (N,) -> the standard classification metrics.

    ``pred`` are the decisions (default: the argmax); a binary run with a tuned threshold passes
    its own. Threshold-free scores (ROC-AUC, AP, log loss, Brier, ECE) use ``probs``.
    ``ranking=False`` leaves out the per-class ROC-AUC and average precision (None): their cost
    grows with the classes (60% of these metrics at 100 classes), and no validation metric an
    epoch is judged by needs them.
    """
    k = len(classes)
    pred = probs.argmax(1) if pred is None else pred
    labels = list(range(k))
    p, r, f1, support = skm.precision_recall_fscore_support(
        targets, pred, labels=labels, zero_division=0
    )
    # a class neither in the targets nor predicted (evaluate on data that holds only some of the
    # run's classes) has no precision, recall or F1, and the macro averages leave it out, as
    # sklearn's do when it is not told the labels: a perfect model scores 1, not 2/10
    seen = (support > 0) | (np.bincount(np.asarray(pred, dtype=np.int64), minlength=k)[:k] > 0)
    # sklearn's average="weighted": the per-class scores weighted by support
    weight = support / support.sum() if support.sum() else np.zeros(k)
    wp, wr, wf1 = (float((v * weight).sum()) for v in (p, r, f1))
    auc, ap = _one_vs_rest(probs, targets, k) if ranking else ([None] * k, [None] * k)
    with warnings.catch_warnings():  # sklearn warns when y_pred lacks a class; that's expected
        warnings.simplefilter("ignore")
        balanced = float(skm.balanced_accuracy_score(targets, pred))
    out = {
        "n": int(len(targets)),
        "accuracy": float(skm.accuracy_score(targets, pred)),
        "balanced_accuracy": balanced,
        "macro_precision": float(p[seen].mean()),
        "macro_recall": float(r[seen].mean()),
        "macro_f1": float(f1[seen].mean()),
        "weighted_precision": float(wp),
        "weighted_recall": float(wr),
        "weighted_f1": float(wf1),
        # Binary: the positive class's AUC/AP; multi-class: one-vs-rest, macro over the classes
        # present in the targets.
        "roc_auc": auc[1] if k == 2 else _mean(auc),
        "average_precision": ap[1] if k == 2 else _mean(ap),
        **probability_scores(probs, targets, k),
        "per_class": {
            c: {**({"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i])} if seen[i]
                   else {"precision": None, "recall": None, "f1": None}),
                "support": int(support[i]), "roc_auc": auc[i], "average_precision": ap[i]}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(targets, pred, labels=labels).tolist(),
    }
    if 2 < k and topk > 1:
        kk = min(topk, k - 1)
        out[f"top{kk}_accuracy"] = float(
            skm.top_k_accuracy_score(targets, probs, k=kk, labels=labels)
        )
    return out


def regression_metrics(pred: np.ndarray, targets: np.ndarray) -> dict:
    mse = float(skm.mean_squared_error(targets, pred))
    return {
        "n": int(len(targets)),
        "mae": float(skm.mean_absolute_error(targets, pred)),
        "rmse": math.sqrt(mse),
        # undefined for fewer than two targets or constant ones (sklearn would say 0)
        "r2": float(skm.r2_score(targets, pred)) if len(targets) > 1 and np.ptp(targets) > 0
        else float("nan"),
    }


def confused_pairs(cm: list[list[int]], classes: list[str], top: int = 10) -> list[dict]:
    """The off-diagonal cells of a confusion matrix, largest first (true -> predicted)."""
    m = np.asarray(cm)
    pairs = [(int(m[i, j]), i, j) for i in range(len(m)) for j in range(len(m)) if i != j
             and m[i, j] > 0]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    rows = m.sum(1)
    return [{"true": classes[i], "predicted": classes[j], "count": n,
             "fraction_of_true": n / rows[i] if rows[i] else 0.0} for n, i, j in pairs[:top]]


# Which way is better, for early stopping and checkpoint selection.
LOWER_IS_BETTER = {"loss", "log_loss", "mae", "rmse", "brier", "ece", "mce", "hamming_loss"}
# Every metric name lists here once: what early stopping may monitor on validation, what the
# end of training prints, what `graft evaluate` prints, what the report's table shows.
VALIDATION_METRICS = {
    "classification": ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_precision",
                       "macro_recall", "log_loss"),
    "regression": ("loss", "mae", "rmse", "r2"),
    "multilabel": ("loss", "mAP", "macro_f1", "micro_f1", "samples_f1", "subset_accuracy",
                   "hamming_loss"),
}
SUMMARY_METRICS = {"classification": ("accuracy", "macro_f1"), "regression": ("rmse", "mae", "r2"),
                   "multilabel": ("macro_f1", "micro_f1", "mAP")}
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "samples_f1", "mAP",
                    "subset_accuracy", "hamming_loss", "macro_precision", "macro_recall",
                    "top5_accuracy", "roc_auc", "log_loss", "ece", "mae", "rmse", "r2")
REPORT_METRICS = ("accuracy", "balanced_accuracy", "top5_accuracy", "top3_accuracy",
                  "top2_accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_f1",
                  "samples_f1", "mAP", "subset_accuracy", "hamming_loss", "label_cardinality",
                  "predicted_cardinality", "weighted_precision", "weighted_recall",
                  "weighted_f1", "roc_auc", "average_precision", "log_loss", "brier", "ece",
                  "mce", "loss", "mae", "rmse", "r2")


def is_better(new: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    if metric in LOWER_IS_BETTER:
        return new < best - min_delta
    return new > best + min_delta
