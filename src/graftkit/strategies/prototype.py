"""Prototypes (nearest class mean, Snell et al. 2017's classifier on frozen features): no
training at all. Each class is the mean of its training examples' L2-normalised backbone
features; an input goes to the class whose mean is nearest by cosine. The head is a cosine layer
(``models.base.CosineLinear``) whose rows are the normalised means times a fixed scale, so the
run directory, predict, export and serve take it like any head; the temperature fitted on
validation then makes its probabilities calibrated. A strong baseline with one to a few labels
per class, and a fast start (the features are cached, the "fit" is one mean per class).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import STRATEGIES, Stage, Strategy, StrategyParams

SCALE = 10.0  # logits = SCALE * cosine; calibration's temperature rescales it on validation


@torch.no_grad()
def solve(head: Any, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Set the cosine head to the normalised class means of ``features`` (N, F)."""
    layer = head[-1]
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    k = layer.out_features
    onehot = torch.nn.functional.one_hot(targets.long(), k).to(x.dtype)  # (N, K)
    means = onehot.T @ x / onehot.sum(0).clamp(min=1).unsqueeze(1)  # (K, F); 0 for no examples
    layer.weight.copy_(SCALE * torch.nn.functional.normalize(means, dim=-1).to(layer.weight))
    layer.bias.zero_()


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    return [Stage("prototype", 1, lr, lambda e: 0, solve=solve)]


def prepare(model: Any, p: StrategyParams) -> None:
    model.set_head_kind("cosine")


STRATEGIES.register("prototype", "nearest class mean (cosine) on cached features; no training")(
    Strategy(plan, default_epochs=1, default_lr=1e-3, prepare=prepare, classification_only=True)
)
