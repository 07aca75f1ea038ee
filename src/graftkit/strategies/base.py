"""What a fine-tuning strategy is: a plan of stages.

A stage trains for some epochs at one base learning rate; at every epoch it says how many of the
backbone's last blocks train (0 = head only, ``ALL`` = everything). The training loop does the
rest: it freezes the other blocks (their BatchNorm stays in eval mode), builds one optimizer per
stage with layer-wise decayed learning rates, and runs a head-only stage on cached features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..registry import Registry

ALL = 10**6  # "every block"


@dataclass(frozen=True)
class StrategyParams:
    """Plain values a strategy may use (from the ``strategy`` config section)."""

    n_blocks: int = 2
    probe_epochs: int | None = None
    probe_lr: float = 3e-3
    unfreeze_every: int = 1


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float
    blocks_at: Callable[[int], int] = field(compare=False)  # epoch in stage -> trainable blocks

    @property
    def head_only(self) -> bool:
        return all(self.blocks_at(e) == 0 for e in range(self.epochs))


@dataclass(frozen=True)
class Strategy:
    """``plan(epochs, lr, params)`` -> stages; defaults used when the config leaves them unset."""

    plan: Callable[[int, float, StrategyParams], list[Stage]]
    default_epochs: int
    default_lr: float
    text_epochs: int | None = None  # default_epochs for a text model, when it differs

    def epochs_for(self, modality: str) -> int:
        return self.text_epochs if modality == "text" and self.text_epochs else self.default_epochs


STRATEGIES: Registry[Strategy] = Registry("strategy")
