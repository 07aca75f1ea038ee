"""Full fine-tuning: every parameter trains (layer-wise decay still applies when set)."""

from __future__ import annotations

from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    return [Stage("full", epochs, lr, lambda e: ALL)]


STRATEGIES.register("full", "train every parameter")(
    Strategy(plan, default_epochs=10, default_lr=1e-4)
)
