"""Decode any image file into an RGB PIL image, or say precisely why not.

Handles grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit and float modes, and EXIF
orientation. Refuses decompression bombs (Pillow's limit, raised to an error rather than a
warning) and truncated files (Pillow's default, kept: a half image is not a training example).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
}
# Pillow's own default (about 89.5 megapixels); twice this raises DecompressionBombError. We make
# anything over the limit an error, not a warning.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class BadImage(Exception):
    """A file that cannot be used as an image; ``reason`` is short and human-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit int / float grayscale: rescale the real range to 8 bits rather than
        # clipping (a plain convert("L") saturates 16-bit data to white).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((arr - lo) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert to RGB. Raises :class:`BadImage`."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
    except OSError as e:
        raise BadImage(f"cannot read: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(
                        f"refused: {img.width}x{img.height} pixels exceeds the decompression-bomb "
                        f"limit of {MAX_PIXELS} pixels"
                    )
                img.load()  # decode now: truncated files fail here, not in a worker later
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower():
            raise BadImage("truncated image") from None
        raise BadImage(f"unreadable image: {msg}") from None
    except (ValueError, SyntaxError, TypeError) as e:  # malformed headers surface as these
        raise BadImage(f"unreadable image: {e}") from None
