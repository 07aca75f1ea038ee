"""Post-hoc calibration fitted on the validation split, stored in the run's meta.json.

- Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one
  scalar T > 0 divides the logits; it minimises the validation NLL and never changes the argmax,
  so accuracy is untouched while the confidences become honest. If the NLL optimum would raise
  the validation ECE (it happens on small splits), T is moved toward 1 just enough that it
  doesn't (:func:`no_worse_ece`); both temperatures are stored.
- Binary decision threshold: chosen on the (calibrated) validation probabilities of the positive
  class for the best F1, or the loosest threshold reaching a target precision / the strictest
  reaching a target recall (scikit-learn's precision-recall curve does the counting).

- Multi-label runs: one temperature for every label's sigmoid, then a decision threshold per label,
  each the best F1 of that label on validation.

Everything that turns logits into probabilities or labels (predict, evaluate, export, serve) goes
through :class:`Calibration`, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

T_MIN, T_MAX = 0.05, 20.0


@dataclass
class Calibration:
    temperature: float = 1.0
    temperature_nll: float | None = None  # the unconstrained NLL optimum (see fit_calibration)
    threshold: float | None = None  # binary only: P(positive) at or above it -> positive
    positive_class: str | None = None
    criterion: str | None = None  # f1 | precision | recall
    target: float | None = None
    # multi-label runs: one sigmoid per label, P(label) at or above its threshold -> present
    multilabel: bool = False
    thresholds: list[float] | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Calibration:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (meta.get("calibration") or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.float() / self.temperature
        return z.sigmoid() if self.multilabel else z.softmax(-1)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices: the argmax, or for a thresholded binary run P(class 1) >= threshold;
        for a multi-label run a boolean (N, K): each label at or above its threshold."""
        if self.multilabel:
            cut = np.asarray(self.thresholds if self.thresholds is not None else 0.5)
            return probs >= cut
        if self.threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        return probs.argmax(1)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200,
                    multilabel: bool = False) -> float:
    """The T minimising the NLL of ``softmax(logits / T)`` (L-BFGS on log T, as Guo et al.);
    ``multilabel``: of every label's ``sigmoid(logits / T)`` (binary cross-entropy)."""
    logits = logits.detach().double()
    targets = targets.double() if multilabel else targets.long()
    nll = (torch.nn.functional.binary_cross_entropy_with_logits if multilabel
           else torch.nn.functional.cross_entropy)
    if len(targets) < 2:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, T_MIN, T_MAX)) if np.isfinite(t) else 1.0


def no_worse_ece(logits: torch.Tensor, targets: torch.Tensor, t_nll: float, steps: int = 40
                 ) -> float:
    """The temperature closest to the NLL optimum whose ECE is no worse than T = 1's.

    On a small validation split the NLL-optimal T can raise the (noisy, binned) ECE a little
    while lowering the NLL. Along the path from 1 to ``t_nll`` (log scale) the NLL falls
    monotonically, so the first point from the ``t_nll`` end that keeps ECE <= ECE(T = 1) is the
    best-NLL temperature that never makes the calibration error worse on the data it was fitted
    on; T = 1 always qualifies.
    """
    from .metrics import calibration_errors

    y = targets.numpy()

    def ece(t: float) -> float:
        return calibration_errors((logits.double() / t).softmax(-1).numpy(), y)["ece"]

    base = ece(1.0)
    for f in np.linspace(1.0, 0.0, steps + 1):
        t = float(t_nll ** f)
        if ece(t) <= base:
            return t
    return 1.0


def choose_threshold(p_pos: np.ndarray, y: np.ndarray, criterion: str,
                     target: float | None = None) -> tuple[float, dict[str, float | bool]]:
    """A decision threshold on P(positive) and what it achieves on (``p_pos``, ``y``).

    Returns ``(threshold, info)`` where info has the precision, recall and F1 reached and
    ``reached`` (False when no threshold meets the target; then the closest one is returned).
    """
    precision, recall, thresholds = precision_recall_curve(y, p_pos)
    # precision/recall have one more entry than thresholds (the (1, 0) end point); drop it.
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(
        precision + recall, 1e-12), 0.0)
    reached = True
    if criterion == "f1":
        i = int(np.argmax(f1))
    elif criterion == "precision":
        ok = np.flatnonzero(precision >= target)
        reached = bool(len(ok))
        # thresholds ascend: the first that reaches the precision keeps the most recall.
        i = int(ok[0]) if reached else int(np.argmax(precision))
    elif criterion == "recall":
        ok = np.flatnonzero(recall >= target)
        reached = bool(len(ok))
        i = int(ok[-1]) if reached else 0  # the strictest that still reaches the recall
    else:
        raise ValueError(f"unknown threshold criterion {criterion!r}")
    return float(thresholds[i]), {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "reached": reached}


def fit_multilabel_calibration(logits: torch.Tensor, targets: torch.Tensor,
                               temperature: bool = True) -> tuple[Calibration, str | None]:
    """A multi-label run's calibration on validation outputs: one temperature for every label's
    sigmoid (binary cross-entropy), then each label's F1-best threshold on the calibrated
    probabilities (``multilabel.tune_thresholds``; a label without positives keeps 0.5)."""
    from .multilabel import tune_thresholds

    cal = Calibration(multilabel=True, criterion="f1")
    if len(targets) < 2:
        cal.thresholds = [0.5] * logits.shape[1]
        return cal, "fewer than 2 validation examples: thresholds left at 0.5"
    if temperature:
        cal.temperature_nll = cal.temperature = fit_temperature(logits, targets,
                                                                multilabel=True)
    probs = cal.probs(logits).double().numpy()
    cal.thresholds = [float(t) for t in tune_thresholds(probs, targets.numpy())]
    return cal, None


def fit_calibration(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                    temperature: bool = True, threshold: str = "none",
                    target: float | None = None) -> tuple[Calibration, str | None]:
    """Fit a run's calibration on validation outputs; returns it and a warning (or None)."""
    cal = Calibration()
    if len(targets) < 2:
        return cal, "fewer than 2 validation examples: calibration left at identity"
    if temperature:
        cal.temperature_nll = fit_temperature(logits, targets)
        cal.temperature = no_worse_ece(logits, targets, cal.temperature_nll)
    if threshold == "none":
        return cal, None
    if len(classes) != 2:
        raise ValueError("a decision threshold is for binary classification")
    positive = targets.numpy() == 1
    if positive.all() or not positive.any():  # every threshold is as good: none is learned
        return cal, (f"validation has {'only' if positive.any() else 'no'} {classes[1]!r} "
                     f"examples: no {threshold} threshold can be fitted; the argmax decides")
    p_pos = cal.probs(logits)[:, 1].numpy()
    cal.threshold, got = choose_threshold(p_pos, positive, threshold, target)
    cal.positive_class, cal.criterion, cal.target = classes[1], threshold, target
    if not got["reached"]:
        return cal, (f"no threshold reaches {threshold} {target} on validation; using the "
                     f"closest ({threshold} {got[threshold]:.3f})")
    return cal, None
