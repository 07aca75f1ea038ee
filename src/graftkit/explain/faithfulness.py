"""Does the heatmap point at what the model uses? Deletion and insertion scores.

Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models"
(BMVC 2018): remove the most-attributed pixels first, in ``steps`` equal steps, and record the
target-class probability; the area under that curve (deletion AUC) is low when the map found the
evidence. Insertion is the mirror image: start from a blurred copy, restore the most-attributed
pixels first; a high AUC is good. As in RISE, deleted pixels take the dataset mean colour (zero
after normalisation) and insertion starts from a Gaussian-blurred image.

Both are compared with the same curves for a random order (fixed seed). By default that order
comes from a random heatmap as smooth as Grad-CAM's: uniform noise on a 7 x 7 grid, upsampled
bilinearly, so both remove contiguous regions and only *where* differs. An i.i.d. random pixel
order (``random_grid=None``) is a much stronger deletion than any contiguous one, whatever it
removes: scattered mean-coloured pixels wreck a CNN's input statistics (the out-of-distribution
artefact of Hooker et al., "A Benchmark for Interpretability Methods", NeurIPS 2019), so smooth
maps lose to it even when they point at the object (benchmarks/explain_faithfulness.py measures
both). Ties in a heatmap (Grad-CAM's ReLU leaves flat zero regions) are broken at random, never
by raster position.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as F

from .methods import mean_colour

BATCH = 64  # perturbed images per forward pass


def _blur(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion start: Gaussian blur, sigma 5 at 224 px (scaled with the image)."""
    sigma = 5.0 * min(x.shape[-2:]) / 224
    k = 2 * math.ceil(2 * sigma) + 1
    return F.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _random_order(rng: np.random.Generator, shape: tuple[int, int], grid: int | None,
                  tie: np.ndarray) -> np.ndarray:
    """Pixel indices in a random order: i.i.d. (``grid`` None) or by a smooth random map."""
    if grid is None:
        return rng.permutation(shape[0] * shape[1])
    noise = torch.from_numpy(rng.random((1, 1, grid, grid))).float()
    smooth = torch.nn.functional.interpolate(noise, size=shape, mode="bilinear")
    return np.lexsort((tie, -smooth.ravel().numpy()))


def _masks(order: np.ndarray, shape: tuple[int, int], steps: int) -> torch.Tensor:
    """``(steps + 1, 1, H, W)``: step k marks the first k/steps of ``order`` as removed."""
    n = order.size
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = np.ceil(np.arange(steps + 1) * n / steps)
    masks = rank[None, :] < counts[:, None]
    return torch.from_numpy(masks.reshape(steps + 1, 1, *shape)).float()


def _auc(curve: np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at equal steps on [0, 1]."""
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / (len(curve) - 1))


@torch.inference_mode()
def _probs(model: nn.Module, images: torch.Tensor, target: int, multilabel: bool = False
           ) -> np.ndarray:
    squash = torch.sigmoid if multilabel else (lambda z: z.softmax(-1))
    out = [squash(model(b.contiguous(memory_format=torch.channels_last)).float())[:, target]
           for b in images.split(BATCH)]
    return torch.cat(out).numpy()


def faithfulness(model: nn.Module, x: torch.Tensor, heatmap: np.ndarray, target: int,
                 steps: int = 20, seed: int = 0, random_grid: int | None = 7,
                 multilabel: bool = False) -> dict[str, Any]:
    """Deletion/insertion AUCs of ``heatmap`` for class ``target`` on image ``x`` (1, C, H, W),
    and of a random order (``seed``; a smooth random map on a ``random_grid`` square grid, or
    i.i.d. pixels for None); ``beats_random`` is deletion below random. The heatmap's curves
    (target probability after each step) come along for plots and diagnosis. ``multilabel``:
    the target label's own sigmoid probability rather than its softmax share."""
    h, w = heatmap.shape
    if tuple(x.shape[-2:]) != (h, w):
        raise ValueError(f"heatmap {heatmap.shape} does not match the image {tuple(x.shape)}")
    rng = np.random.default_rng(seed)
    tie = rng.random(h * w)
    ranked = np.lexsort((tie, -heatmap.ravel()))  # most attributed first
    random = _random_order(rng, (h, w), random_grid, tie)
    x = x.detach().float()
    mean, blurred = mean_colour(model, x), _blur(x)
    batches, was_training = [], model.training
    for order in (ranked, random):
        m = _masks(order, (h, w), steps)
        batches += [x * (1 - m) + mean * m, blurred * (1 - m) + x * m]  # deletion, insertion
    model.eval()
    try:
        p = _probs(model, torch.cat(batches), target, multilabel).reshape(4, steps + 1)
    finally:
        model.train(was_training)
    deletion, insertion, deletion_random, insertion_random = map(_auc, p)
    return {"deletion_auc": deletion, "deletion_auc_random": deletion_random,
            "insertion_auc": insertion, "insertion_auc_random": insertion_random,
            "beats_random": deletion < deletion_random, "steps": steps,
            "random": f"{random_grid}x{random_grid} map" if random_grid else "pixels",
            "deletion_curve": [round(float(v), 4) for v in p[0]],
            "insertion_curve": [round(float(v), 4) for v in p[1]]}
