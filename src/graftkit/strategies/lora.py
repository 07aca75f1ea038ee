"""LoRA (Hu et al. 2022): low-rank adapters on the attention projections train, with the head;
the pretrained weights stay frozen. Transformer (text) models only. The strategy wraps the model
before training and merges the adapters into the weights at the end, so the run directory holds
a plain model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    # With LoRA applied, the model's blocks hold only the adapter parameters (see
    # HFTextAdapter.blocks), so "every block" trains the adapters and nothing else.
    return [Stage("lora", epochs, lr, lambda e: ALL)]


def prepare(model: Any, p: StrategyParams) -> None:
    from ..models.text import apply_lora

    apply_lora(model, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_targets)


def finalize(model: Any, weights: Path) -> None:
    """Merge the adapters; the best weights file then holds the plain model. A finish that was
    cut short after that file was rewritten (it has no ``lora_`` tensors) is not merged twice."""
    from safetensors import safe_open

    from ..models.text import merge_lora
    from ..train.checkpoint import load_weights, save_weights

    with safe_open(str(weights), "pt") as f:
        merged = not any("lora_" in k for k in f.keys())
    if not merged:
        load_weights(model, weights)
    merge_lora(model)
    if not merged:
        save_weights(model, weights)


STRATEGIES.register("lora", "low-rank adapters on attention + head (transformers; merged at "
                    "the end)")(Strategy(plan, default_epochs=5, default_lr=5e-4,
                                         modalities=frozenset({"text"}), prepare=prepare,
                                         finalize=finalize,
                                         requires="for images use last_n, lp_ft or full"))
