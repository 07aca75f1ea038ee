"""WiSE-FT: weight-space ensembling of the probe and the fine-tuned model.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): the linear interpolation
``(1 - alpha) * theta_0 + alpha * theta_ft`` of the weights before and after end-to-end fine-tuning
keeps most of the fine-tuned accuracy and much of the pretrained model's robustness to
distribution shift. With a new head there is no zero-shot classifier, so ``theta_0`` is the
pretrained backbone with the head of a linear probe: exactly the end of LP-FT's probe stage, which
graft snapshots to ``checkpoints/probe.safetensors``.
"""

from __future__ import annotations

import torch

PROBE = "checkpoints/probe.safetensors"
FINETUNED = "checkpoints/finetuned.safetensors"


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
