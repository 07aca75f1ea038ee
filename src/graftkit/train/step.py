"""One training step, shared by the loop and ``graft lr-find``: AugMix's views apart, MixUp/CutMix,
the forward pass under autocast, the loss (+ AugMix's Jensen-Shannon consistency), the backward
pass and the optimizer update."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import LossFn
from .settings import LoopSettings


def to_device(x: Any, s: LoopSettings) -> Any:
    """A batch of inputs on the device: an image tensor (NHWC when channels_last), or a dict of
    token tensors (text)."""
    if isinstance(x, torch.Tensor):
        x = x.to(s.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if (
            s.channels_last and x.ndim == 4) else x
    return {k: v.to(s.device, non_blocking=True) for k, v in x.items()}


def loss_target(y: torch.Tensor, s: LoopSettings) -> torch.Tensor:
    return (y.float() - s.target_mean) / s.target_std if s.task == "regression" else y


JSD_WEIGHT = 12.0  # lambda of AugMix's consistency loss (Hendrycks et al. 2020)


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence among the softmaxes of several views (AugMix's consistency
    loss): the mean KL of each view's distribution from their average."""
    probs = [F.softmax(z, dim=-1) for z in logits]
    log_m = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()
    return sum(F.kl_div(log_m, p, reduction="batchmean") for p in probs) / len(probs)


def train_step(model: nn.Module, forward: Callable, x: Any, y: torch.Tensor, loss_fn: LossFn,
               s: LoopSettings, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               mix: Callable | None = None, accumulate: int = 1, update: bool = True,
               weight: float = 1.0) -> tuple[float, int]:
    """One training batch: AugMix's views apart, MixUp/CutMix, the forward pass under autocast,
    the loss (+ JSD), the backward of 1/``accumulate`` of it and, when ``update``, the optimizer
    step (gradient clipping, GradScaler). Returns (loss, batch size); a non-finite loss comes
    back before any backward, for the caller to report.

    On several processes (``s.world``) this is one rank's slice of a global batch: the loss that
    comes back is the global batch's mean and size (so every rank sees a non-finite one and
    stops), and the backward is of ``weight`` times the slice's mean (see
    ``distributed.GlobalBatches``)."""
    views = isinstance(x, torch.Tensor) and x.ndim == 5  # AugMix + JSD: (B, 3, C, H, W)
    if views:
        x = x.transpose(0, 1).reshape(-1, *x.shape[2:])  # clean, aug1, aug2 blocks of B
    x, y = to_device(x, s), y.to(s.device, non_blocking=True)
    if mix is not None:
        x, y = mix(x, y)
    with torch.autocast(s.device.type, s.amp_dtype, enabled=s.amp_dtype is not None):
        out = forward(x)
    if views:
        out, *augs = out.float().split(len(y))
        loss = loss_fn(out, loss_target(y, s)) + JSD_WEIGHT * jensen_shannon(out, *augs)
    else:
        loss = loss_fn(out.float(), loss_target(y, s))
    value, n = loss.item(), len(y)
    if s.world.active:
        total, n_all = s.world.sum([value * n * (weight > 0), n * (weight > 0)])
        value, n = total / max(n_all, 1.0), int(n_all)
    if not math.isfinite(value):
        return value, n
    _backward(model, loss * weight if weight != 1.0 else loss, s, opt, scaler, accumulate, update)
    return value, n


def _backward(model: nn.Module, loss: torch.Tensor, s: LoopSettings, opt: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, accumulate: int, update: bool) -> None:
    scaler.scale(loss / accumulate).backward()
    if update:
        if s.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)


def fixmatch_step(model: nn.Module, x: Any, y: torch.Tensor, weak: Any, strong: Any,
                  hidden: torch.Tensor, loss_fn: LossFn, s: LoopSettings,
                  opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, threshold: float,
                  lambda_u: float, accumulate: int = 1, update: bool = True,
                  prior: torch.Tensor | None = None, p_mean: torch.Tensor | None = None
                  ) -> tuple[float, int, dict[str, Any]]:
    """One FixMatch step (Sohn et al. 2020): the labeled loss plus ``lambda_u`` times the mean
    over the unlabeled batch of the cross-entropy between the strong view's prediction and the
    weak view's argmax, counted where the weak view's probability reaches ``threshold``. Returns
    (loss, labeled batch size, {accepted: share of the unlabeled batch used, correct: how many
    of those match ``hidden`` (-1 where unknown), known: how many had a known label,
    p_mean: the weak view's mean probabilities in this batch}).

    With ``prior`` (the labeled class distribution), the weak view's probabilities are first
    aligned to it (distribution alignment, Berthelot et al. 2020, ReMixMatch): multiplied by
    ``prior / p_mean`` (``p_mean``: their running mean so far, this batch's own when None) and
    renormalised, so the pseudo-labels cannot all drift to one class."""
    x, y = to_device(x, s), y.to(s.device, non_blocking=True)
    weak, strong = to_device(weak, s), to_device(strong, s)
    amp = dict(device_type=s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None)
    with torch.no_grad(), torch.autocast(**amp):  # type: ignore[arg-type]
        probs = model(weak).float().softmax(-1)
    batch_mean = probs.mean(0).detach().cpu()
    if prior is not None:
        ref = (batch_mean if p_mean is None else p_mean).to(probs.device)
        probs = probs * (prior.to(probs.device) / ref.clamp_min(1e-6))
        probs = probs / probs.sum(-1, keepdim=True)
    conf, pseudo = probs.max(-1)
    mask = (conf >= threshold).float()
    with torch.autocast(**amp):  # type: ignore[arg-type]
        if isinstance(x, torch.Tensor) and isinstance(strong, torch.Tensor):
            out_x, out_s = model(torch.cat([x, strong])).float().split([len(y), len(pseudo)])
        else:  # token dicts of different lengths: one pass each
            out_x, out_s = model(x).float(), model(strong).float()
    loss_u = (F.cross_entropy(out_s, pseudo, reduction="none") * mask).mean()
    loss = loss_fn(out_x, loss_target(y, s)) + lambda_u * loss_u
    hidden = hidden.to(pseudo.device)
    known = (hidden >= 0) & mask.bool()
    stats: dict[str, Any] = {
        "accepted": float(mask.sum()), "seen": float(len(mask)), "known": float(known.sum()),
        "correct": float((pseudo[known] == hidden[known]).sum()), "p_mean": batch_mean}
    if not torch.isfinite(loss):
        return loss.item(), len(y), stats
    _backward(model, loss, s, opt, scaler, accumulate, update)
    return loss.item(), len(y), stats
