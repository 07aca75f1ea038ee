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
from typing import Any

import torch
from torch.utils.data import Dataset

PROBE = "checkpoints/probe.safetensors"
FINETUNED = "checkpoints/finetuned.safetensors"
ALPHAS = [round(0.1 * i, 1) for i in range(11)]
# The corruption half of the "clean+corruption" objective: one per ImageNet-C family, severity 3.
OBJECTIVE_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "jpeg_compression")


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


class _Corrupted(Dataset):
    """Validation images corrupted once (as the model sees them), then normalised."""

    def __init__(self, model: Any, items: Sequence[tuple[str, float]], task: str, name: str,
                 seed: int) -> None:
        from ..data.images import load_image
        from ..data.transforms import eval_view, to_model_input
        from ..robustness.bench import cell_seed
        from ..robustness.corruptions import corrupt

        view, finish = eval_view(model.data_config), to_model_input(model.data_config)
        self.x = [finish(corrupt(view(load_image(p)), name, 3, cell_seed(seed, i, name, 3)))
                  for i, (p, _) in enumerate(items)]
        self.y = [torch.tensor(int(t)) if task == "classification" else torch.tensor(t)
                  for _, t in items]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def corrupted_sets(model: Any, items: Sequence[tuple[str, float]], task: str, seed: int
                   ) -> dict[str, Dataset]:
    """The validation split under each objective corruption (images only)."""
    if model.modality != "image":
        raise ValueError("the clean+corruption objective needs an image model")
    return {name: _Corrupted(model, items, task, name, seed) for name in OBJECTIVE_CORRUPTIONS}
