"""WiSE-FT: weight-space ensembling of the probe and the fine-tuned model.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): the linear interpolation
``(1 - alpha) * theta_0 + alpha * theta_ft`` of the weights before and after end-to-end fine-tuning
keeps most of the fine-tuned accuracy and much of the pretrained model's robustness to
distribution shift. With a new head there is no zero-shot classifier, so ``theta_0`` is the
pretrained backbone with the head of a linear probe: exactly the end of LP-FT's probe stage, which
graft snapshots to ``checkpoints/probe.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..run import FINETUNED, PROBE  # noqa: F401  (re-exported: WiSE-FT's two ends)

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
# The corruption half of the "clean+corruption" objective is the modality's (``corrupted_sets``).


def pick_alpha(rows: Sequence[dict[str, float]], tol: float = 1e-9) -> float:
    """The swept alpha to keep: the best ``objective``; among alphas that tie on it (common on a
    small validation split, where accuracy moves in steps of 1/n), the one nearest 0.5, then the
    lower validation loss. Wortsman et al. found the middle of the path the most robust under
    distribution shift at little cost in accuracy; on hymenoptera's flat sweep a tie broken by
    validation loss alone picked alpha = 0, the probe itself, and threw the fine-tuning away."""
    best = max(r["objective"] for r in rows)
    tied = [r for r in rows if r["objective"] >= best - tol]
    return min(tied, key=lambda r: (round(abs(r["alpha"] - 0.5), 6), r["val_loss"], r["alpha"])
               )["alpha"]


def interpolate(theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor], alpha: float
                ) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta_0 + alpha * theta_1`` for floating tensors (weights and BatchNorm
    statistics); integer buffers (BatchNorm's batch counters) come from ``theta_1``."""
    if theta_0.keys() != theta_1.keys():
        raise ValueError("the two state dicts hold different tensors")
    out = {}
    for k, v1 in theta_1.items():
        v0 = theta_0[k]
        out[k] = torch.lerp(v0.to(v1.dtype), v1, alpha) if v1.is_floating_point() else v1.clone()
    return out
