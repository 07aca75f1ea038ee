"""Loss functions, registered by name. Each builder returns ``loss(outputs, targets)``.

Classification losses accept hard targets ``(B,)`` or soft ones ``(B, K)`` (MixUp/CutMix);
multi-label losses take 0/1 targets ``(B, K)`` against one logit per label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Callable[..., LossFn]] = Registry("loss")
REGRESSION_LOSSES = {"mse", "huber", "l1"}
MULTILABEL_LOSSES = {"bce", "asl"}


def loss_task(name: str) -> str:
    """The task a registered loss is for."""
    return ("regression" if name in REGRESSION_LOSSES else
            "multilabel" if name in MULTILABEL_LOSSES else "classification")


@LOSSES.register("cross_entropy", "cross-entropy with label smoothing and class weights")
def cross_entropy(
    class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0, **_: Any
) -> LossFn:
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = None if class_weights is None else class_weights.to(logits.device)
        return F.cross_entropy(logits, y, weight=w, label_smoothing=label_smoothing)

    return loss


@LOSSES.register("focal", "focal loss (Lin et al. 2017), focal_gamma")
def focal(
    class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
    focal_gamma: float = 2.0, **_: Any,
) -> LossFn:
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = logits.shape[-1]
        soft = y if y.ndim == 2 else F.one_hot(y, k).to(logits.dtype)
        if label_smoothing:
            soft = soft * (1 - label_smoothing) + label_smoothing / k
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, K)
        per_class = -soft * (1 - logp.exp()) ** focal_gamma * logp
        if class_weights is not None:
            per_class = per_class * class_weights.to(logits.device)
        return per_class.sum(-1).mean()

    return loss


def _smooth(y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """0/1 label targets pulled toward 1/2 by ``label_smoothing``."""
    y = y.float()
    return y * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else y


@LOSSES.register("bce", "binary cross-entropy per label (multilabel)")
def bce(label_smoothing: float = 0.0, **_: Any) -> LossFn:
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), _smooth(y, label_smoothing))

    return loss


ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05  # Ridnik et al. 2021's defaults


@LOSSES.register("asl", "asymmetric loss (Ridnik et al. 2021), for many negatives (multilabel)")
def asymmetric(label_smoothing: float = 0.0, **_: Any) -> LossFn:
    """Easy negatives down-weighted by ``(p_m)^4`` with the probability shifted by 0.05
    (``p_m = max(p - 0.05, 0)``), positives as in cross-entropy: many absent labels stop
    dominating the gradient. The mean over examples of the sum over labels, divided by the
    number of labels so its scale matches ``bce``."""
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _smooth(y, label_smoothing)
        p = torch.sigmoid(logits.float())
        p_m = (p - ASL_CLIP).clamp(min=0)
        pos = y * torch.log(p.clamp(min=1e-8)) * (1 - p) ** ASL_GAMMA_POS
        neg = (1 - y) * torch.log((1 - p_m).clamp(min=1e-8)) * p_m ** ASL_GAMMA_NEG
        return -(pos + neg).mean()

    return loss


def _regression(fn: Callable[..., torch.Tensor]) -> Callable[..., LossFn]:
    def build(**kw: Any) -> LossFn:
        delta = kw.get("huber_delta", 1.0)

        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = out.squeeze(-1).float()
            return fn(out, y.float(), delta=delta) if fn is F.huber_loss else fn(out, y.float())

        return loss

    return build


LOSSES.register("mse", "mean squared error (regression)")(_regression(F.mse_loss))
LOSSES.register("huber", "Huber loss, huber_delta (regression)")(_regression(F.huber_loss))
LOSSES.register("l1", "mean absolute error (regression)")(_regression(F.l1_loss))


def auto_class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 (sklearn's "balanced")."""
    counts = torch.bincount(torch.tensor(targets, dtype=torch.long), minlength=num_classes).float()
    w = counts.sum() / (num_classes * counts.clamp(min=1))
    return w / w.mean()


def build_loss(name: str, **kw: Any) -> LossFn:
    return LOSSES.get(name)(**kw)
