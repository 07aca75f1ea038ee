"""LoRA (Hu et al. 2022): low-rank adapters on the attention projections train, with the head;
the pretrained weights stay frozen. Transformer (text) models only; the adapters are merged into
the weights at the end, so the run directory holds a plain model."""

from __future__ import annotations

from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    # With LoRA applied, the model's blocks hold only the adapter parameters (see
    # HFTextAdapter.blocks), so "every block" trains the adapters and nothing else.
    return [Stage("lora", epochs, lr, lambda e: ALL)]


STRATEGIES.register("lora", "low-rank adapters on attention + head (transformers; merged at "
                    "the end)")(Strategy(plan, default_epochs=5, default_lr=5e-4))
