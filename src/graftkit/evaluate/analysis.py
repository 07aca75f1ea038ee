"""From a model's raw outputs on labeled items to everything the report needs.

``analyze`` is shared by the end of training and by ``graft evaluate``: it applies the run's
calibration, computes the metrics (scikit-learn) and keeps the per-example arrays that the plots
and the error analysis read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score

from .calibration import Calibration
from .metrics import (
    classification_metrics,
    confused_pairs,
    probability_scores,
    regression_metrics,
)
from .multilabel import confused_pairs as multilabel_pairs
from .multilabel import multilabel_ece, multilabel_metrics, reliability_per_label


@dataclass
class Analysis:
    task: str
    classes: list[str]
    metrics: dict[str, Any]
    targets: np.ndarray
    items: list[str] = field(default_factory=list)  # what each row is (a path, a text)
    probs: np.ndarray | None = None  # calibrated (N, K)
    probs_raw: np.ndarray | None = None  # temperature 1
    pred: np.ndarray | None = None  # class indices, or de-standardised values for regression

    @property
    def correct(self) -> np.ndarray:
        """Per example: the decision is right (multi-label: every label of it)."""
        if self.task == "multilabel":
            return (self.pred == self.targets.astype(bool)).all(1)
        return self.pred == self.targets

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the decision (multi-label: the mean, over labels, of the
        probability of what was decided for each)."""
        assert self.probs is not None
        if self.task == "multilabel":
            return np.where(self.pred, self.probs, 1 - self.probs).mean(1)
        return self.probs[np.arange(len(self.pred)), self.pred]

    def names(self, row: np.ndarray) -> str:
        """A multi-label row (0/1 or bool) as its label names."""
        return ";".join(c for c, v in zip(self.classes, row) if v) or "(none)"

    def top_losses(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` examples with the highest loss (most confidently wrong first)."""
        if self.probs is None or n <= 0:
            return []
        if self.task == "multilabel":
            return self._top_multilabel(n)
        idx = np.arange(len(self.targets))
        p_true = self.probs[idx, self.targets]
        loss = -np.log(np.clip(p_true, 1e-12, 1))
        order = np.argsort(-loss, kind="stable")[:n]
        return [{"index": int(i), "item": self.items[i] if i < len(self.items) else str(i),
                 "true": self.classes[self.targets[i]], "predicted": self.classes[self.pred[i]],
                 "confidence": float(self.confidence[i]), "p_true": float(p_true[i]),
                 "loss": float(loss[i]), "correct": bool(self.correct[i])} for i in order]


    def _top_multilabel(self, n: int) -> list[dict[str, Any]]:
        """Highest binary cross-entropy over the labels first; ``p_true`` is the probability
        the model gives the true label set, label by label."""
        assert self.probs is not None
        y, p = self.targets.astype(bool), np.clip(self.probs, 1e-12, 1 - 1e-12)
        p_right = np.where(y, p, 1 - p)
        loss = -np.log(p_right).sum(1)
        order = np.argsort(-loss, kind="stable")[:n]
        return [{"index": int(i), "item": self.items[i] if i < len(self.items) else str(i),
                 "true": self.names(y[i]), "predicted": self.names(self.pred[i]),
                 "confidence": float(self.confidence[i]), "p_true": float(p_right[i].prod()),
                 "loss": float(loss[i]), "correct": bool(self.correct[i])} for i in order]


def analyze_multilabel(outputs: torch.Tensor, targets: torch.Tensor, classes: list[str],
                       cal: Calibration, items: list[str] | None = None) -> Analysis:
    """A multi-label run's metrics under its calibration (temperature, per-label thresholds),
    and, under ``at_0.5``, the same scores at the untuned 0.5 of every label."""
    y = targets.numpy().astype(np.int64)
    raw = outputs.float().sigmoid().numpy().astype(np.float64)
    probs = cal.probs(outputs).numpy().astype(np.float64)
    pred = cal.decide(probs)
    cut = np.asarray(cal.thresholds) if cal.thresholds is not None else None
    m: dict[str, Any] = {"n": int(len(y)), **multilabel_metrics(probs, y, cut, classes)}
    m["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(
        outputs.float(), targets.float()))
    m["calibration"] = cal.to_dict()
    m["ece"] = multilabel_ece(probs, y)
    m["reliability"] = reliability_per_label(probs, y, classes=classes)
    plain = multilabel_metrics(raw, y, None, classes)
    m["at_0.5"] = {k: plain[k] for k in ("macro_f1", "micro_f1", "samples_f1",
                                          "subset_accuracy", "hamming_loss")}
    m["at_0.5"]["ece"] = multilabel_ece(raw, y)
    m["confused_pairs"] = multilabel_pairs(probs, y, cut, classes)
    return Analysis("multilabel", classes, m, y, list(items or []), probs, raw, pred)


def analyze(outputs: torch.Tensor, targets: torch.Tensor, task: str, classes: list[str],
            calibration: Calibration | None = None, topk: int = 5,
            target_stats: dict[str, float] | None = None, items: list[str] | None = None,
            ) -> Analysis:
    """Metrics of raw model outputs under a calibration (default: none)."""
    cal = calibration or Calibration()
    y = targets.numpy()
    if task == "multilabel":
        return analyze_multilabel(outputs, targets, classes, cal, items)
    if task == "regression":
        ts = target_stats or {}
        pred = outputs.squeeze(-1).double().numpy() * ts.get("std", 1.0) + ts.get("mean", 0.0)
        return Analysis(task, classes, regression_metrics(pred, y.astype(np.float64)),
                        y.astype(np.float64), list(items or []), pred=pred)
    y = y.astype(np.int64)
    raw = outputs.float().softmax(-1).numpy().astype(np.float64)
    probs = cal.probs(outputs).numpy().astype(np.float64)
    pred = cal.decide(probs)
    m = classification_metrics(probs, y, classes, topk, pred=pred)
    m["loss"] = float(torch.nn.functional.cross_entropy(outputs.float(), targets.long()))
    m["calibration"] = cal.to_dict()
    # T = 1 and the argmax: the accuracy here equals the calibrated one unless a binary
    # threshold moved decisions (temperature alone never does).
    m["uncalibrated"] = {"accuracy": float(accuracy_score(y, raw.argmax(1))),
                         **probability_scores(raw, y, len(classes))}
    m["confused_pairs"] = confused_pairs(m["confusion_matrix"], classes)
    return Analysis(task, classes, m, y, list(items or []), probs, raw, pred)


TTA_KEYS = {"classification": ("accuracy", "macro_f1", "ece", "log_loss"),
            "regression": ("mae", "rmse", "r2"),
            "multilabel": ("macro_f1", "micro_f1", "mAP", "ece")}


def compare_tta(plain: Analysis, tta: Analysis, views: list[str], seconds: list[float],
                temperature: float | None = None, temperature_tta: float | None = None
                ) -> dict[str, Any]:
    """metrics.json's ``tta``: the plain model's and the view-averaged model's headline metrics
    on the same inputs (each under its temperature), how many decisions the averaging fixed and
    broke, and the model time of one view against all of them."""
    keys = TTA_KEYS[tta.task]
    out: dict[str, Any] = {
        "views": len(views), "names": views,
        "without": {k: plain.metrics.get(k) for k in keys},
        "with": {k: tta.metrics.get(k) for k in keys},
        "model_seconds_without": round(seconds[0], 3), "model_seconds_with": round(sum(seconds), 3),
        "temperature_without": temperature, "temperature_with": temperature_tta,
    }
    if tta.task == "classification":
        out["fixed"] = int((~plain.correct & tta.correct).sum())
        out["broken"] = int((plain.correct & ~tta.correct).sum())
    return out
