"""Linear probe: the backbone stays frozen, only the new head trains.

With no random augmentation the backbone's features are computed once and cached, so each epoch
costs only the head (see graftkit.train.features).
"""

from __future__ import annotations

from .base import STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    return [Stage("probe", epochs, lr, lambda e: 0)]


STRATEGIES.register("linear_probe", "frozen backbone, train the head on cached features")(
    Strategy(plan, default_epochs=30, default_lr=3e-3)
)
