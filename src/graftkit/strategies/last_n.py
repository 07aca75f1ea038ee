"""Last-N: unfreeze the last ``strategy.n_blocks`` blocks of the backbone and the head."""

from __future__ import annotations

from .base import STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    n = p.n_blocks
    return [Stage(f"last_{n}", epochs, lr, lambda e: n)]


STRATEGIES.register("last_n", "train the last N backbone blocks and the head")(
    Strategy(plan, default_epochs=10, default_lr=3e-4)
)
