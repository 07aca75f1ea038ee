"""Decoding images of every mode, and refusing the bad ones with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftkit.data.images import BadImage, load_image


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_grayscale_becomes_rgb_with_same_values(tmp_path: Path) -> None:
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    img = load_image(_save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert img.mode == "RGB" and img.size == (8, 8)
    out = np.asarray(img)
    assert (out[..., 0] == arr).all() and (out[..., 2] == arr).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(load_image(_save(rgba, tmp_path / "a.png")))
    assert (out == 255).all(), "transparent pixels must become white, not red or black"


def test_cmyk_jpeg_converts(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(_save(cmyk, tmp_path / "c.jpg", quality=95)))
    assert out.shape == (6, 6, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_16bit_png_is_rescaled_not_saturated(tmp_path: Path) -> None:
    arr = np.full((5, 5), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(load_image(_save(img, tmp_path / "d.png")))
    assert 120 <= out.mean() <= 135, out.mean()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (20, 10), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(_save(img, tmp_path / "e.jpg", exif=exif))
    assert out.size == (10, 20)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    out = load_image(_save(img, tmp_path / "p.png", transparency=0))
    assert np.asarray(out).min() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"hello, not an image", "not an image")],
)
def test_bad_files_have_reasons(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_image(p)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                 tmp_path / "full.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(BadImage, match="truncated|unreadable"):
        load_image(cut)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    # 20000 x 20000 = 4e8 pixels > graft's 180 Mpx limit; as 1-bit PNG it is only a few KB.
    p = _save(Image.new("1", (20000, 20000)), tmp_path / "bomb.png", optimize=True)
    assert p.stat().st_size < 1_000_000
    with pytest.raises(BadImage, match="decompression-bomb|decompression bomb"):
        load_image(p)


def test_a_100_megapixel_photo_is_a_photo_not_a_bomb(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import graftkit.data.images as images

    p = _save(Image.new("L", (10000, 10000), 128), tmp_path / "big.png", optimize=True)
    img = load_image(p)  # over Pillow's own 89.5 Mpx limit, under graft's 180 Mpx
    assert img.size == (10000, 10000) and img.mode == "RGB"
    del img
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000_000)  # the setting, made smaller
    with pytest.raises(BadImage, match="limit of 50000000 pixels"):
        load_image(p)


@pytest.mark.parametrize("raw", ["abc", "-5", "0", "1.5e9"])
def test_a_bad_pixel_limit_is_the_users_one_line_error(raw: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.data import images
    from graftkit.errors import ConfigError

    monkeypatch.setenv("GRAFT_MAX_IMAGE_PIXELS", raw)
    with pytest.raises(ConfigError, match="GRAFT_MAX_IMAGE_PIXELS"):
        images._max_pixels()
    monkeypatch.setenv("GRAFT_MAX_IMAGE_PIXELS", "1000")
    assert images._max_pixels() == 1000
