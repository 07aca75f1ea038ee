"""Full fine-tuning: every parameter trains (layer-wise decay still applies when set)."""

from __future__ import annotations

from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    return [Stage("full", epochs, lr, lambda e: ALL)]


# A pretrained text transformer fine-tunes in 2-4 epochs (Devlin et al. 2019; the Hugging Face
# Trainer's default is 3); on this project's text data one epoch already met its targets.
STRATEGIES.register("full", "train every parameter")(
    Strategy(plan, default_epochs=10, default_lr=1e-4, epochs_by_modality={"text": 3})
)
