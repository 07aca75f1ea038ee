"""Drift of live traffic against the training reference (``reference.json``).

The monitor keeps the last ``window`` served predictions (class, calibrated confidence, input
statistics) and compares them with the reference the run stored from its validation split:

- class distribution shift: the population stability index (PSI) of the predicted classes,
  ``sum((live - ref) * ln(live / ref))`` over classes, proportions floored at 1e-4. By the usual
  rule of thumb below 0.1 is stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one;
- confidence shift: live mean confidence minus the reference's, and the PSI of the confidence
  histograms (10 bins on [0, 1]);
- inputs: for each statistic (image brightness, width, height; text characters, words) the live
  mean, the reference mean, and the shift in reference standard deviations.

A verdict is given only once ``min_samples`` predictions were seen. Pure numpy: no torch.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluate.reference import CONF_EDGES, confidence_hist

EPS = 1e-4
MODERATE, LARGE = 0.1, 0.25
MIN_SAMPLES = 30


def psi(live: np.ndarray | list[float], ref: np.ndarray | list[float], eps: float = EPS) -> float:
    """Population stability index of two distributions over the same bins (any scale: both are
    normalised; empty bins are floored at ``eps``)."""
    a, e = np.asarray(live, np.float64), np.asarray(ref, np.float64)
    if a.shape != e.shape or a.sum() <= 0 or e.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions over the same bins")
    a, e = np.maximum(a / a.sum(), eps), np.maximum(e / e.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _level(value: float | None) -> str | None:
    if value is None:
        return None
    return "large" if value > LARGE else "moderate" if value > MODERATE else "stable"


class Monitor:
    """The live window and its comparison with ``reference`` (None: live statistics only;
    ``reference_error`` says why there is none)."""

    def __init__(self, classes: list[str], task: str, stat_keys: Sequence[str],
                 reference: dict[str, Any] | None = None, window: int = 1000,
                 min_samples: int = MIN_SAMPLES) -> None:
        """``stat_keys``: the input statistics to compare (the modality's)."""
        self.classes, self.task, self.stat_keys = list(classes), task, tuple(stat_keys)
        self.window, self.min_samples = window, min_samples
        self.reference = reference
        self.reference_error: str | None = None if reference else "not loaded yet"
        self._lock = threading.Lock()
        self._pred: deque[int] = deque(maxlen=window)
        self._conf: deque[float] = deque(maxlen=window)
        self._values: deque[float] = deque(maxlen=window)
        self._inputs: deque[dict[str, float]] = deque(maxlen=window)
        self.total = 0

    def set_reference(self, reference: dict[str, Any] | None, error: str | None = None) -> None:
        self.reference, self.reference_error = reference, (None if reference else error)

    def record(self, prediction: dict[str, Any], stats: dict[str, float]) -> None:
        """One served prediction (as returned by the API) and the statistics of its input."""
        with self._lock:
            self.total += 1
            self._inputs.append(stats)
            if "value" in prediction:
                self._values.append(float(prediction["value"]))
                return
            if "labels" in prediction:  # multi-label: every label decided, and the mean
                self._pred.extend(self.classes.index(n) for n in prediction["labels"])
                self._conf.append(float(prediction["confidence"]))  # confidence of them all
                return
            self._pred.append(self.classes.index(prediction["label"]))
            self._conf.append(float(prediction["prob"]))

    def report(self) -> dict[str, Any]:
        with self._lock:
            pred, conf = np.array(self._pred, np.int64), np.array(self._conf, np.float64)
            values, inputs = np.array(self._values, np.float64), list(self._inputs)
        ref = self.reference
        n = len(inputs)
        out: dict[str, Any] = {
            "n": n, "total": self.total, "window": self.window, "min_samples": self.min_samples,
            "reference": None if ref is None else {k: ref.get(k) for k in ("split", "n",
                                                                           "created")},
            "reference_error": self.reference_error,
            "thresholds": {"moderate": MODERATE, "large": LARGE},
        }
        if self.task in ("classification", "multilabel"):
            out["classes"] = self._classes(pred, ref)
            out["confidence"] = self._confidence(conf, ref)
        else:
            live = {"mean": float(values.mean()), "std": float(values.std())} if len(values) \
                else None
            out["value"] = {"live": live, "reference": (ref or {}).get("value")}
        out["inputs"] = self._inputs_report(inputs, ref)
        psis = [v for v in ((out.get("classes") or {}).get("psi"),
                            (out.get("confidence") or {}).get("psi")) if v is not None]
        if n < self.min_samples or ref is None:
            out["status"] = "insufficient_data" if ref is not None else "no_reference"
        else:
            out["status"] = _level(max(psis)) if psis else "stable"
        return out

    def _classes(self, pred: np.ndarray, ref: dict[str, Any] | None) -> dict[str, Any]:
        k = len(self.classes)
        counts = np.bincount(pred, minlength=k) if len(pred) else np.zeros(k)
        live = (counts / counts.sum()).tolist() if counts.sum() else None
        ref_frac = [float((ref or {}).get("predicted", {}).get(c, 0.0)) for c in self.classes]
        value = psi(counts, ref_frac) if live and ref and sum(ref_frac) > 0 else None
        return {"psi": value, "level": _level(value),
                "live": dict(zip(self.classes, live)) if live else None,
                "reference": dict(zip(self.classes, ref_frac)) if ref else None}

    def _confidence(self, conf: np.ndarray, ref: dict[str, Any] | None) -> dict[str, Any]:
        rc = (ref or {}).get("confidence")
        live_mean = float(conf.mean()) if len(conf) else None
        out: dict[str, Any] = {"live_mean": live_mean,
                               "reference_mean": rc["mean"] if rc else None,
                               "shift": None, "psi": None, "edges": CONF_EDGES,
                               "live_hist": confidence_hist(conf) if len(conf) else None}
        if rc and live_mean is not None:
            out["shift"] = live_mean - float(rc["mean"])
            out["psi"] = psi(out["live_hist"], rc["hist"])
        return out

    def _inputs_report(self, inputs: list[dict[str, float]], ref: dict[str, Any] | None
                       ) -> dict[str, Any]:
        ri = (ref or {}).get("inputs") or {}
        out = {}
        for k in self.stat_keys:
            vals = [s[k] for s in inputs if k in s]
            live = float(np.mean(vals)) if vals else None
            r = ri.get(k)
            shift = None
            if r and live is not None:
                # A constant reference (every image the same size) has no scale: 0 or unknown.
                shift = (live - r["mean"]) / r["std"] if r["std"] > 0 else (
                    0.0 if math.isclose(live, r["mean"]) else None)
            out[k] = {"live_mean": live, "reference_mean": r["mean"] if r else None,
                      "reference_std": r["std"] if r else None, "shift_std": shift}
        return out
