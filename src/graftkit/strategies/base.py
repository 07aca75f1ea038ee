"""What a fine-tuning strategy is: a plan of stages.

A stage trains for some epochs at one base learning rate; at every epoch it says how many of the
backbone's last blocks train (0 = head only, ``ALL`` = everything). The training loop does the
rest: it freezes the other blocks (their BatchNorm stays in eval mode), builds one optimizer per
stage with layer-wise decayed learning rates, and runs a head-only stage on cached features.

A strategy may also ``prepare`` the model before training (LoRA wraps it with adapters) and
``finalize`` the best weights after it (LoRA merges them), and it says which modalities it
supports. No strategy name is compared outside this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

ALL = 10**6  # "every block"


@dataclass(frozen=True)
class StrategyParams:
    """Plain values a strategy may use (from the ``strategy`` config section)."""

    n_blocks: int = 2
    probe_epochs: int | None = None
    probe_lr: float = 3e-3
    unfreeze_every: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Stage:
    """``solve(head, features, targets)``: the stage fits the head in closed form on cached
    features instead of training it (one "epoch"). ``pseudo_round`` > 0: the stage trains on the
    labels plus pseudo-labels of the unlabeled pool chosen when it starts (self-training round
    r; a head-only round starts from a new head). ``fixmatch``: every step also learns from the
    unlabeled pool (FixMatch). The session sets the last two for semi-supervised runs."""

    name: str
    epochs: int
    lr: float
    blocks_at: Callable[[int], int] = field(compare=False)  # epoch in stage -> trainable blocks
    solve: Callable[[Any, Any, Any], None] | None = field(default=None, compare=False)
    pseudo_round: int = 0
    fixmatch: bool = False

    @property
    def head_only(self) -> bool:
        return all(self.blocks_at(e) == 0 for e in range(self.epochs))


@dataclass(frozen=True)
class Strategy:
    """``plan(epochs, lr, params)`` -> stages; defaults used when the config leaves them unset.

    ``prepare(model, params)`` runs once the model is built (before any weights are restored on
    resume); ``finalize(model, weights_file)`` once training is over, before the best weights are
    scored: it leaves the file holding what the run directory should keep."""

    plan: Callable[[int, float, StrategyParams], list[Stage]]
    default_epochs: int
    default_lr: float
    epochs_by_modality: dict[str, int] = field(default_factory=dict)  # where they differ
    modalities: frozenset[str] | None = None  # None: every modality
    prepare: Callable[[Any, StrategyParams], None] | None = None
    finalize: Callable[[Any, Path], None] | None = None
    requires: str = ""  # what a model of an unsupported modality is told to use instead
    classification_only: bool = False

    def epochs_for(self, modality: str) -> int:
        return self.epochs_by_modality.get(modality, self.default_epochs)

    def check_modality(self, name: str, modality: str) -> None:
        if self.modalities is not None and modality not in self.modalities:
            raise ConfigError(f"config key 'strategy.name': {name} is for "
                              f"{' and '.join(sorted(self.modalities))} models; {self.requires}")


STRATEGIES: Registry[Strategy] = Registry("strategy")
