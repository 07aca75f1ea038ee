"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): the first epochs train the head alone, then
every ``strategy.unfreeze_every`` epochs one more backbone block, from the top, joins in.
Combine with ``strategy.layer_decay`` for ULMFiT's discriminative learning rates.
"""

from __future__ import annotations

from .base import STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    every = p.unfreeze_every
    return [Stage("gradual", epochs, lr, lambda e: e // every)]


STRATEGIES.register("gradual", "unfreeze one more block from the top every K epochs (ULMFiT)")(
    Strategy(plan, default_epochs=10, default_lr=3e-4)
)
