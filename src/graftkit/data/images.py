"""Decode any image file into an RGB PIL image, or say precisely why not.

Handles grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit and float modes, and EXIF
orientation. Refuses decompression bombs (Pillow's limit, raised to an error rather than a
warning) and truncated files (Pillow's default, kept: a half image is not a training example).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInput

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
}
# Pillow's own default (about 89.5 megapixels); twice this raises DecompressionBombError. We make
# anything over the limit an error, not a warning.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


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


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert to RGB. Raises :class:`BadImage`."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
    except OSError as e:
        raise BadImage(f"cannot read: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise BadImage(f"cannot read: {e}") from None
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
    try:
        return str(item), load_image(item)
    except BadImage as e:
        raise BadImage(f"{item}: {e.reason}", e.code) from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an uploaded image file -> an RGB PIL image, decoded as :func:`load_image` decodes
    files, or :class:`BadImage`. More than ``max_pixels`` pixels is refused on the header, before
    Pillow decodes anything (a decompression bomb: a small PNG of a huge blank image). Only common
    raster formats are opened: no PostScript (Ghostscript), no plugins beyond them."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and raises above twice it; ours is checked first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(f"image of {w}x{h} = {w * h} pixels is over the limit of "
                                   f"{max_pixels} pixels", "too_many_pixels")
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img)
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
