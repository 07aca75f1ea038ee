"""Decode any image file into an RGB PIL image, or say precisely why not.

Handles grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit and float modes, and EXIF
orientation. Refuses decompression bombs (more than ``MAX_PIXELS``, 180 million by default, or
``$GRAFT_MAX_IMAGE_PIXELS``: an error, not Pillow's warning) and truncated files (Pillow's
default, kept: a half image is not a training example).

Also, without torch, two rules of the evaluation transform (its interpolation, the side it resizes
to) that the export bundle and its torch-free predictor state.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInput, ConfigError
from . import decoded

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
}
# The most pixels an image file may have (header checked before decoding): a 100-megapixel photo
# is a photo, a PNG of 400 million blank pixels is a decompression bomb. Pillow's own limit
# (89.5 MP, an error at twice that) is replaced by this one; $GRAFT_MAX_IMAGE_PIXELS sets it.
DEFAULT_MAX_PIXELS = 180_000_000


def _max_pixels() -> int:
    raw = os.environ.get("GRAFT_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:  # the user's mistake, one line (as a bad GRAFT_THREADS is)
        raise ConfigError(f"GRAFT_MAX_IMAGE_PIXELS={raw!r}: give a whole number of pixels, 1 or "
                          f"more (default {DEFAULT_MAX_PIXELS})")
    return value


MAX_PIXELS = _max_pixels()
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow warns above it (an error below) and raises at 2x


# Formats an upload may be in (graft serve); everything else is "unsupported image type".
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# File signatures of those formats: a file that starts like one but does not open is corrupt,
# anything else is of an unsupported type.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"P1", b"P2",
          b"P3", b"P4", b"P5", b"P6")


class BadImage(BadInput):
    """A file that cannot be used as an image; ``code``: ``bad_image``, ``unsupported_type`` or
    ``too_many_pixels``."""

    def __init__(self, reason: str, code: str = "bad_image") -> None:
        super().__init__(reason, code)


def to_rgb(img: Image.Image) -> Image.Image:
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


def load_image(path: str | Path, keep: bool = False) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert to RGB. Raises :class:`BadImage`.

    ``keep``: the data check's decode, kept for the first reader of the file (see
    :mod:`.decoded`); a reader takes the kept image, if there is one, instead of decoding."""
    p = Path(path)
    try:
        st = p.stat()
        if st.st_size == 0:
            raise BadImage("empty file (0 bytes)")
    except OSError as e:
        raise BadImage(f"cannot read: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise BadImage(f"cannot read: {e}") from None
    return decoded.read(decoded.key(p, st), keep, lambda: _decode(p),
                        lambda img: img.width * img.height * len(img.getbands()))


def _decode(p: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(
                        f"refused: {img.width}x{img.height} pixels exceeds the decompression-bomb "
                        f"limit of {MAX_PIXELS} pixels (GRAFT_MAX_IMAGE_PIXELS)"
                    )
                img.load()  # decode now: truncated files fail here, not in a worker later
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img)
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


def open_image(item: str | Path | Image.Image) -> tuple[str, Image.Image]:
    """(name, RGB image) of an image file or an already open image; :class:`BadImage`'s reason
    then names the file."""
    if isinstance(item, Image.Image):
        return "<image>", item.convert("RGB")
    if not isinstance(item, (str, os.PathLike)):
        raise BadImage(f"{type(item).__name__}: give an image file path or a PIL image")
    try:
        return str(item), load_image(item)
    except BadImage as e:
        raise BadImage(f"{item}: {e.reason}", e.code) from None


def interpolation(name: str) -> str:
    """The interpolation graftkit's evaluation transform really applies for a data config's name
    (anything but bicubic/nearest is bilinear, as in ``graftkit.data.transforms``)."""
    return name if name in ("bicubic", "nearest") else "bilinear"


def resize_size(pre: dict[str, Any]) -> int:
    """The short side an image is resized to before the evaluation transform's centre crop."""
    return int(round(pre["input_size"] / pre["crop_pct"]))


@contextmanager
def _reading_upload(data: bytes) -> Iterator[None]:
    """Every way reading an upload fails, as a :class:`BadImage` with its code."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and raises above twice it; ours is checked first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused as a decompression bomb: {e}", "too_many_pixels") from None
    except UnidentifiedImageError:
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise BadImage("corrupt image: its header is unreadable") from None
        raise BadImage(f"not an image of a supported type ({', '.join(FORMATS)})",
                       "unsupported_type") from None
    except (OSError, ValueError, SyntaxError, TypeError, EOFError, MemoryError) as e:
        reason = "truncated image" if "truncated" in str(e).lower() else f"corrupt image: {e}"
        raise BadImage(reason) from None


def _open_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The upload opened, its header read (nothing decoded yet) and its pixels checked."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                       "pixels", "too_many_pixels")
    return img


def upload_pixels(data: bytes, max_pixels: int, model_side: int = 0) -> int:
    """The pixels an uploaded image file will hold, read from its header without decoding
    anything: width x height, or more where the preprocessing's resize of the short side to
    ``model_side`` makes it larger (a 40000x1 strip becomes 256 x 10 million pixels before its
    centre crop). :class:`BadImage` as :func:`decode_image` raises it for an unreadable header
    or either count over ``max_pixels``."""
    with _reading_upload(data):
        w, h = _open_upload(data, max_pixels).size
    resized = -(-model_side * model_side * max(w, h) // min(w, h)) if model_side else 0
    if resized > max_pixels:
        raise BadImage(f"image of {w}x{h} is {resized} pixels once its short side is resized to "
                       f"{model_side}: over the limit of {max_pixels} pixels (too long and thin)",
                       "too_many_pixels")
    return max(w * h, resized)


def decode_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Bytes of an uploaded image file -> an RGB PIL image, decoded as :func:`load_image` decodes
    files, or :class:`BadImage`. More than ``max_pixels`` pixels is refused on the header, before
    Pillow decodes anything (a decompression bomb: a small PNG of a huge blank image). Only common
    raster formats are opened: no PostScript (Ghostscript), no plugins beyond them.

    ``min_side``: the caller needs no more than this many pixels on the shorter side. A JPEG at
    least twice that in both sides is decoded at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``: the
    JPEG decoder scales its DCT, the full-size image is never held), both sides staying at least
    ``min_side``; every other image decodes at full size, pixel for pixel as ``load_image``.
    """
    with _reading_upload(data):
        img = _open_upload(data, max_pixels)
        if min_side > 0 and img.format == "JPEG" and min(img.size) >= 2 * min_side:
            img.draft(img.mode, (min_side, min_side))
        img.load()
        # in place: no full-size copy when there is nothing to rotate (exif_transpose copies)
        ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img)
