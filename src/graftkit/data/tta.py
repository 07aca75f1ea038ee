"""Test-time augmentation: deterministic views of a model batch, averaged by the consumers.

A view maps a model batch to another batch of the same shape; the first view of every list is
the batch itself, so ``--tta 1`` is the plain model and the scores without TTA come for free from
the same pass. The modality picks the family (:meth:`Modality.tta_views`):

- images (``(B, C, H, W)``, already normalised: flips and resampling commute with the per-channel
  normalisation): the horizontal flip, then crops of the picture zoomed by 1/0.875 (the centre,
  then the four corners), each also flipped while views remain: the ten-crop family of Krizhevsky
  et al. (2012) on the model's own crop. Without flips (a run trained with ``augment: none``,
  e.g. digits) only the zoomed crops are used.
- sounds (``{"input": (B, ..., T), "length": (B,)}``): the clip moved later or earlier in its
  window by 50, 100, 150 ms (silence comes in, the window's end or start goes out), as the
  training presets' random time shift does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

View = tuple[str, Callable[[Any], Any]]
ZOOM = 1 / 0.875  # timm's default crop_pct: the crop of a picture resized this much larger


def identity(x: Any) -> Any:
    return x


def _zoom_crop(where: str, flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        big = F.interpolate(x.float(), size=(round(h * ZOOM), round(w * ZOOM)), mode="bilinear",
                            align_corners=False, antialias=False).to(x.dtype)
        dh, dw = big.shape[-2] - h, big.shape[-1] - w
        top, left = {"centre": (dh // 2, dw // 2), "top-left": (0, 0), "top-right": (0, dw),
                     "bottom-left": (dh, 0), "bottom-right": (dh, dw)}[where]
        out = big[..., top:top + h, left:left + w]
        out = out.flip(-1) if flip else out
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out
    return view


def _hflip(x: torch.Tensor) -> torch.Tensor:
    out = x.flip(-1)
    return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


def image_views(flips: bool = True) -> list[View]:
    """Every image view, in the order ``--tta N`` takes the first N (12 with flips, else 6)."""
    corners = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")
    views: list[View] = [("identity", identity)]
    if flips:
        views.append(("flip", _hflip))
        for where in corners:
            views.append((f"zoom {where}", _zoom_crop(where, False)))
            views.append((f"zoom {where} + flip", _zoom_crop(where, True)))
    else:
        views += [(f"zoom {where}", _zoom_crop(where, False)) for where in corners]
    return views


def _shift(steps: int, silence: float | None
           ) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Move each clip ``steps`` input steps later (> 0) or earlier (< 0) in its window: the
    vacated steps take ``silence`` (None: the clip's lowest value, a log-mel spectrogram's
    silence), the clip's own length follows."""
    def view(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, length = b["input"], b["length"]
        t = x.shape[-1]
        src = torch.arange(t, device=x.device) - steps  # where each output step reads from
        flat = x.reshape(x.shape[0], -1, t)
        keep = (src >= 0)[None, :] & (src[None, :] < length[:, None])  # (B, T)
        fill = (flat.amin(dim=(1, 2), keepdim=True) if silence is None
                else torch.full((1, 1, 1), silence, dtype=x.dtype, device=x.device))
        moved = flat[..., src.clamp(0, t - 1)]
        out = torch.where(keep[:, None, :], moved, fill).reshape(x.shape)
        return {**b, "input": out, "length": (length + steps).clamp(1, t).to(length.dtype)}
    return view


def audio_views(steps_per_second: float, silence: float | None = None) -> list[View]:
    """Every sound view (7): no shift, then +-50, +-100, +-150 ms, later first; ``silence``: the
    input value of silence (None: each clip's lowest)."""
    views: list[View] = [("identity", identity)]
    for ms in (50, 100, 150):
        steps = max(1, round(steps_per_second * ms / 1000))
        views += [(f"+{ms} ms", _shift(steps, silence)), (f"-{ms} ms", _shift(-steps, silence))]
    return views


def first(views: list[View], n: int, what: str) -> list[View]:
    """The first ``n`` of ``views``; a one-line error when there are fewer (``what``: "image
    runs trained without flips")."""
    from ..errors import ConfigError

    if n < 1:
        raise ConfigError(f"--tta takes a number of views >= 1 (1 = off), not {n}")
    if n > len(views) == 1:
        raise ConfigError(f"--tta {n}: {what} have no test-time views (use 1)")
    if n > len(views):
        raise ConfigError(f"--tta {n}: {what} have {len(views)} test-time views at most")
    return views[:n]


class Averaged:
    """``model`` averaged over ``views``: the mean of the views' outputs (logits, so that the
    run's temperature and threshold apply as to one view's). Keeps the first view's outputs (the
    plain model's, for the with-and-without comparison) and the seconds each view took."""

    def __init__(self, model: Callable[[Any], torch.Tensor], views: list[View]) -> None:
        self.model, self.views = model, views
        self.plain: list[torch.Tensor] = []
        self.seconds = [0.0] * len(views)

    def __call__(self, x: Any) -> torch.Tensor:
        import time

        outs = []
        for i, (_, view) in enumerate(self.views):
            t0 = time.perf_counter()
            outs.append(self.model(view(x)).float())
            self.seconds[i] += time.perf_counter() - t0
        self.plain.append(outs[0])
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)
