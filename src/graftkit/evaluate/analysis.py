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
        return self.pred == self.targets

    @property
    def confidence(self) -> np.ndarray:
        assert self.probs is not None
        return self.probs[np.arange(len(self.pred)), self.pred]

    def top_losses(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` examples with the highest loss (most confidently wrong first)."""
        if self.probs is None or n <= 0:
            return []
        idx = np.arange(len(self.targets))
        p_true = self.probs[idx, self.targets]
        loss = -np.log(np.clip(p_true, 1e-12, 1))
        order = np.argsort(-loss, kind="stable")[:n]
        return [{"index": int(i), "item": self.items[i] if i < len(self.items) else str(i),
                 "true": self.classes[self.targets[i]], "predicted": self.classes[self.pred[i]],
                 "confidence": float(self.confidence[i]), "p_true": float(p_true[i]),
                 "loss": float(loss[i]), "correct": bool(self.correct[i])} for i in order]


def analyze(outputs: torch.Tensor, targets: torch.Tensor, task: str, classes: list[str],
            calibration: Calibration | None = None, topk: int = 5,
            target_stats: dict[str, float] | None = None, items: list[str] | None = None,
            ) -> Analysis:
    """Metrics of raw model outputs under a calibration (default: none)."""
    cal = calibration or Calibration()
    y = targets.numpy()
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
            "regression": ("mae", "rmse", "r2")}


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
