"""Loss functions, registered by name. Each builder returns ``loss(outputs, targets)``.

Classification losses accept hard targets ``(B,)`` or soft ones ``(B, K)`` (MixUp/CutMix).
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
