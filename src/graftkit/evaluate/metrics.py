"""Metrics as pure functions of predictions and targets (scikit-learn does the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    probs: np.ndarray, targets: np.ndarray, classes: list[str], topk: int = 5
) -> dict:
    """``probs`` (N, K) and integer ``targets`` (N,) -> accuracy, macro P/R/F1, per-class, CM."""
    k = len(classes)
    pred = probs.argmax(1)
    labels = list(range(k))
    p, r, f1, support = skm.precision_recall_fscore_support(
        targets, pred, labels=labels, zero_division=0
    )
    out = {
        "n": int(len(targets)),
        "accuracy": float(skm.accuracy_score(targets, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(targets, pred)),
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(targets, pred, labels=labels).tolist(),
    }
    if 2 < k and topk > 1:
        kk = min(topk, k - 1)
        out[f"top{kk}_accuracy"] = float(
            skm.top_k_accuracy_score(targets, probs, k=kk, labels=labels)
        )
    eps = 1e-12
    out["log_loss"] = float(skm.log_loss(targets, np.clip(probs, eps, 1), labels=labels))
    return out


def regression_metrics(pred: np.ndarray, targets: np.ndarray) -> dict:
    mse = float(skm.mean_squared_error(targets, pred))
    return {
        "n": int(len(targets)),
        "mae": float(skm.mean_absolute_error(targets, pred)),
        "rmse": math.sqrt(mse),
        "r2": float(skm.r2_score(targets, pred)) if len(targets) > 1 else float("nan"),
    }


# Which way is better, for early stopping and checkpoint selection.
LOWER_IS_BETTER = {"loss", "log_loss", "mae", "rmse"}


def is_better(new: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    if metric in LOWER_IS_BETTER:
        return new < best - min_delta
    return new > best + min_delta
