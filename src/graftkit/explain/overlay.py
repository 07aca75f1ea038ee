"""Heatmap overlays on the image as the model saw it, with a caption bar."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms import v2 as T

from ..data.transforms import DataConfig, eval_transform

ALPHA = 0.45
COLORMAP = "jet"
BAR = 36  # caption bar height in pixels (two lines)


def model_view(image: Image.Image, dc: DataConfig) -> Image.Image:
    """The resized, centre-cropped RGB image the model is fed (the geometric steps of
    ``eval_transform`` without normalisation), so heatmap pixels line up with it."""
    geometry = [t for t in eval_transform(dc).transforms if isinstance(t, (T.Resize, T.CenterCrop))]
    return T.Compose(geometry)(image.convert("RGB"))


def overlay(image: Image.Image, heatmap: np.ndarray, label: str, prob: float, *,
            method: str = "", target: str | None = None, alpha: float = ALPHA) -> Image.Image:
    """``heatmap`` (H, W in [0, 1]) in the jet colormap blended over ``image`` (the model's view;
    resized to the heatmap if it differs), above a bar reading "predicted: label (prob)" and the
    method and explained class."""
    h, w = heatmap.shape
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    colour = matplotlib.colormaps[COLORMAP](np.clip(heatmap, 0, 1))[..., :3]
    blend = ((1 - alpha) * base + alpha * colour) * 255
    canvas = Image.new("RGB", (w, h + BAR), (24, 24, 24))
    canvas.paste(Image.fromarray(blend.round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    draw.text((4, h + 2), f"predicted: {label} ({prob:.2f})", fill=(255, 255, 255), font=font)
    detail = " | ".join(s for s in (method, f"target: {target}" if target else "") if s)
    draw.text((4, h + 19), detail, fill=(190, 190, 190), font=font)
    return canvas
