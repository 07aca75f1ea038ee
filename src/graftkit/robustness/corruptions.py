"""The 15 ImageNet-C corruptions and the 4 extra ("validation") ones, at severities 1-5.

Parameters are those of Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations" (ICLR), as coded in ``make_imagenet_c.py`` of
github.com/hendrycks/robustness. Most functions come from ``imagecorruptions-imaug`` (a maintained
fork of bethgelab's ``imagecorruptions``, which generalises the reference code from 224x224 crops
to any size). Three are re-implemented here because the library departs from the reference,
and two for speed:

- ``elastic_transform``: the library swaps in a different, size-relative displacement field; this
  module uses the reference one (random affine, then a smoothed random field).
- ``frost``: the library rescales every frost texture by 1.1 and also draws the 6th texture,
  which the reference never uses; this module crops the texture at its own scale (growing it only
  when the image is larger than the texture) and draws among the first five.
- ``pixelate``: the library upsamples with NEAREST; the reference uses BOX both ways.
- ``zoom_blur``: same algorithm and uint8 output as the library's, with a faster bilinear zoom.
- ``glass_blur``: the library's, with its numba kernel compiled once and cached on disk.

``motion_blur`` and ``snow`` use the library's numpy motion blur in place of the reference's
ImageMagick (Wand) one, so they are close to, not bit-equal with, ImageNet-C.

Blur radii, noise and displacements are in pixels as in the reference, which works on 224x224
images: corrupt images at the size the model sees them for numbers comparable to ImageNet-C.

Determinism: the library draws from numpy's *global* legacy generator (``np.random.*``), and
seeds ``impulse_noise`` explicitly (and ``glass_blur``'s numba kernel, copied here).
:func:`corrupt` holds a process-wide lock, seeds the global generator with ``seed``, runs the
corruption and restores the generator's previous state, so a call is a pure function of (image,
name, severity, seed) and leaves other users of ``np.random`` undisturbed. Calls from several
threads therefore run one at a time; parallelise with processes (see
:mod:`graftkit.robustness.bench`).
"""

from __future__ import annotations

import importlib.resources
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import cv2
import imagecorruptions.corruptions as _ic
import numpy as np
from numba import njit
from PIL import Image
from scipy import ndimage as ndi

from ..errors import ConfigError

MIN_SIDE = 32
"""The smallest image side accepted (the library's limit: glass blur, frost crops, fractals)."""

SEVERITIES = (1, 2, 3, 4, 5)

GROUPS: dict[str, list[str]] = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise"],
    "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
    "weather": ["snow", "frost", "fog", "brightness"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"],
    "extra": ["speckle_noise", "gaussian_blur", "spatter", "saturate"],
}
STANDARD = [n for g in ("noise", "blur", "weather", "digital") for n in GROUPS[g]]
ALL = STANDARD + GROUPS["extra"]

# An implementation maps (HxWx3 uint8 array, severity, seed) to an array-like of the same shape
# in [0, 255]; it may draw from the global np.random, which corrupt() seeds.
_Impl = Callable[[np.ndarray, int, int], object]


def _library(name: str, seeded: bool = False) -> _Impl:
    fn = getattr(_ic, name)

    def impl(x: np.ndarray, severity: int, seed: int) -> object:
        kwargs = {"seed": seed} if seeded else {}
        return fn(Image.fromarray(x), severity, **kwargs)

    return impl


def _elastic_transform(x: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Reference ``elastic_transform`` (make_imagenet_c.py): (alpha, sigma, affine) in pixels."""
    c = [(244 * 2, 244 * 0.7, 244 * 0.1),  # the reference's 244 (for 224) is kept on purpose
         (244 * 2, 244 * 0.08, 244 * 0.2),
         (244 * 0.05, 244 * 0.01, 244 * 0.02),
         (244 * 0.07, 244 * 0.01, 244 * 0.02),
         (244 * 0.12, 244 * 0.01, 244 * 0.02)][severity - 1]
    rng = np.random.RandomState(seed)
    image = x.astype(np.float32) / 255.0
    h, w = image.shape[:2]

    # random affine (the reference's (row, col) points passed as (x, y) are kept as they are)
    center = np.float32([h, w]) // 2
    square = min(h, w) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square],
                       center - square])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    affine = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, affine, (w, h), borderMode=cv2.BORDER_REFLECT_101)

    def field() -> np.ndarray:
        noise = rng.uniform(-1, 1, size=(h, w))
        return (ndi.gaussian_filter(noise, c[1], mode="reflect", truncate=3) * c[0]).astype(
            np.float32)

    dx, dy = field(), field()
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows + dy, cols + dx])
    out = np.stack([ndi.map_coordinates(image[..., k], coords, order=1, mode="reflect")
                    for k in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def _zoom_linear(img: np.ndarray, zoom: float) -> np.ndarray:
    """``scipy.ndimage.zoom(img, (zoom, zoom, 1), order=1)`` done separably, in float64."""
    out = img
    for axis in (0, 1):
        n_in = img.shape[axis]
        n_out = int(round(float(n_in * zoom)))  # as scipy: Python (banker's) rounding
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))  # scipy's corner-aligned grid
        i0 = np.minimum(pos.astype(np.intp), n_in - 2)
        shape = [1, 1, 1]
        shape[axis] = n_out
        weight = (pos - i0).reshape(shape)
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i0 + 1, axis=axis)
        hi -= lo
        hi *= weight
        lo += hi
        out = lo
    return out.astype(np.float32)


def _zoom_blur(x: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Reference ``zoom_blur`` (the library's version for any size): the mean of the image and
    centre crops of it zoomed by each factor. The library's per-zoom ``scipy.ndimage.zoom`` was
    most of the benchmark's time; :func:`_zoom_linear` gives the same uint8 output 2x faster."""
    c = [np.arange(1, 1.11, 0.01),
         np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.02),
         np.arange(1, 1.26, 0.02),
         np.arange(1, 1.31, 0.03)][severity - 1]
    img = (x / 255.0).astype(np.float32)
    img64 = img.astype(np.float64)
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for zoom in c:
        ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
        top, left = (h - ch) // 2, (w - cw) // 2
        out += _zoom_linear(img64[top:top + ch, left:left + cw], zoom)[:h, :w]
    return np.clip((img + out) / (len(c) + 1), 0, 1) * 255


@njit(cache=True)
def _shuffle_pixels(d0: int, d1: int, x: np.ndarray, max_delta: int, iterations: int,
                    seed: int) -> np.ndarray:  # pragma: no cover - compiled by numba
    """The library's glass-blur kernel, statement for statement (its per-pixel swap included),
    with plain int arguments: one compiled signature, cached on disk (``cache=True``), where the
    library's takes the (sigma, delta, iterations) tuple, compiles twice per process (an int or
    a float sigma) and caches nothing: 3 s a compile, in every worker."""
    np.random.seed(seed)
    for _ in range(iterations):
        for h in range(d0 - max_delta, max_delta, -1):
            for w in range(d1 - max_delta, max_delta, -1):
                dx, dy = np.random.randint(-max_delta, max_delta, size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


def _glass_blur(x: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """The library's ``glass_blur`` (blur, locally shuffle pixels, blur), same output."""
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),
                                (1.5, 4, 2)][severity - 1]
    x = np.uint8(_ic.gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    x = _shuffle_pixels(x.shape[0], x.shape[1], x, delta, iterations, seed)
    return np.clip(_ic.gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg",
                "frost6.jpg")


@lru_cache(maxsize=len(_FROST_FILES))
def _frost_texture(idx: int) -> np.ndarray:
    ref = importlib.resources.files("imagecorruptions") / "frost" / _FROST_FILES[idx]
    with importlib.resources.as_file(ref) as path:
        bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(f"frost texture {_FROST_FILES[idx]} missing from imagecorruptions")
    return np.ascontiguousarray(bgr[..., ::-1])  # RGB


def _frost(x: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Reference ``frost``: a random crop of one of five frost photos, blended with the image."""
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    rng = np.random.RandomState(seed)
    frost = _frost_texture(rng.randint(5))  # sic: the reference never draws frost6
    h, w = x.shape[:2]
    fh, fw = frost.shape[:2]
    if fh <= h or fw <= w:  # larger than the texture: grow it just enough to crop from
        scale = max((h + 1) / fh, (w + 1) / fw)
        size = (math.ceil(fw * scale), math.ceil(fh * scale))
        frost = cv2.resize(frost, size, interpolation=cv2.INTER_CUBIC)
    top = rng.randint(0, frost.shape[0] - h)
    left = rng.randint(0, frost.shape[1] - w)
    crop = frost[top:top + h, left:left + w].astype(np.float64)
    return np.clip(c[0] * x + c[1] * crop, 0, 255)


def _pixelate(x: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Reference ``pixelate``: BOX-downsample by the factor, BOX-upsample back."""
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    img = Image.fromarray(x)
    w, h = img.size
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


# name -> (implementation, what severities 1..5 set, per make_imagenet_c.py)
_SPECS: dict[str, tuple[_Impl, str]] = {
    "gaussian_noise": (_library("gaussian_noise"), "noise std .08/.12/.18/.26/.38"),
    "shot_noise": (_library("shot_noise"), "Poisson photons per unit 60/25/12/5/3"),
    "impulse_noise": (_library("impulse_noise", seeded=True),
                      "salt-and-pepper fraction .03/.06/.09/.17/.27"),
    "defocus_blur": (_library("defocus_blur"),
                     "disk (radius, alias blur) (3,.1)/(4,.5)/(6,.5)/(8,.5)/(10,.5)"),
    "glass_blur": (_glass_blur,
                   "(sigma, max shift, iterations) (.7,1,2)/(.9,2,1)/(1,2,3)/(1.1,3,2)/(1.5,4,2)"),
    "motion_blur": (_library("motion_blur"),
                    "(radius, sigma) (10,3)/(15,5)/(15,8)/(15,12)/(20,15), random angle"),
    "zoom_blur": (_zoom_blur,
                  "zooms 1..1.11 step .01 / ..1.16 .01 / ..1.21 .02 / ..1.26 .02 / ..1.31 .03"),
    "snow": (_library("snow"), "snow layer (mean, std, zoom, threshold, blur radius, "
             "blur sigma, image weight), from (.1,.3,3,.5,10,4,.8) to (.55,.3,2.5,.85,12,12,.55)"),
    "frost": (_frost, "(image, frost) weights (1,.4)/(.8,.6)/(.7,.7)/(.65,.7)/(.6,.75)"),
    "fog": (_library("fog"),
            "(fog amount, fractal decay) (1.5,2)/(2,2)/(2.5,1.7)/(2.5,1.5)/(3,1.4)"),
    "brightness": (_library("brightness"), "HSV value + .1/.2/.3/.4/.5"),
    "contrast": (_library("contrast"), "contrast factor .4/.3/.2/.1/.05"),
    "elastic_transform": (_elastic_transform, "(alpha, sigma, affine) = 244 x (2,.7,.1)/"
                          "(2,.08,.2)/(.05,.01,.02)/(.07,.01,.02)/(.12,.01,.02) px"),
    "pixelate": (_pixelate, "downscale factor .6/.5/.4/.3/.25"),
    "jpeg_compression": (_library("jpeg_compression"), "JPEG quality 25/18/15/10/7"),
    "speckle_noise": (_library("speckle_noise"), "multiplicative noise std .15/.2/.35/.45/.6"),
    "gaussian_blur": (_library("gaussian_blur"), "sigma 1/2/3/4/6"),
    "spatter": (_library("spatter"), "water drops (severities 1-3) or mud (4-5)"),
    "saturate": (_library("saturate"), "HSV saturation x .3/.1/2/5/20 + 0/0/0/.1/.2"),
}

_RNG_LOCK = threading.Lock()


@contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    with _RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an HxW or HxWx3 image array, got shape {arr.shape}")
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image is {arr.shape[1]}x{arr.shape[0]}; corruptions need sides of at "
                         f"least {MIN_SIDE} px")
    return np.ascontiguousarray(arr)


def _check(name: str, severity: int) -> None:
    if name not in _SPECS:
        raise ConfigError(f"unknown corruption {name!r}; choose from: {', '.join(ALL)}")
    if not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be an integer 1-5, got {severity!r}")


def corrupt_array(image: Image.Image | np.ndarray, name: str, severity: int,
                  seed: int = 0) -> np.ndarray:
    """Like :func:`corrupt` but returns the HxWx3 uint8 array (what the benchmark workers ship)."""
    _check(name, severity)
    x = _as_rgb_array(image)
    seed32 = int(seed) % 2**32
    with _seeded_global_rng(seed32), np.errstate(divide="ignore", invalid="ignore"):
        out = _SPECS[name][0](x, int(severity), seed32)
    arr = np.asarray(out, dtype=np.float64)
    # NaN only where the library divides 0 by 0 (spatter whose random layer has no drop, seen on
    # tiny images): nothing was added there, so keep the clean pixel
    arr = np.where(np.isnan(arr), x, arr)
    arr = np.uint8(np.clip(arr, 0, 255))  # truncation to uint8, as the reference does
    if arr.shape != x.shape:
        raise RuntimeError(f"{name} returned shape {arr.shape} for an image of shape {x.shape}")
    return arr


def corrupt(image: Image.Image | np.ndarray, name: str, severity: int,
            seed: int = 0) -> Image.Image:
    """Corrupt an RGB image (PIL, or uint8 HxW / HxWx3 array) with ``name`` at ``severity`` 1-5.

    The result is an RGB image of the input's size, a pure function of (image, name, severity,
    seed) (the seed is taken modulo 2**32). Corruptions without randomness ignore the seed.
    """
    return Image.fromarray(corrupt_array(image, name, severity, seed), mode="RGB")


def _registered(name: str, what: str) -> Callable[..., Image.Image]:
    def fn(image: Image.Image | np.ndarray, severity: int, seed: int = 0) -> Image.Image:
        return corrupt(image, name, severity, seed)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"{name.replace('_', ' ').capitalize()}; severities 1-5 set {what} "
                  "(Hendrycks & Dietterich 2019, make_imagenet_c.py).")
    return fn


CORRUPTIONS: dict[str, Callable[..., Image.Image]] = {
    name: _registered(name, _SPECS[name][1]) for name in ALL
}
"""Every corruption by name, in the reference order: ``fn(image, severity, seed=0) -> Image``."""

RANDOM = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
                    "snow", "frost", "fog", "elastic_transform", "speckle_noise", "spatter"})
"""The corruptions whose output depends on the seed."""


def resolve_corruptions(spec: str) -> list[str]:
    """Names from ``all`` (the 15 standard), ``all+extra`` (19), a group, or a comma list of
    names and groups (order kept, duplicates dropped)."""
    names: list[str] = []
    for raw in str(spec).split(","):
        item = raw.strip().lower()
        if item == "all":
            names += STANDARD
        elif item == "all+extra":
            names += ALL
        elif item in GROUPS:
            names += GROUPS[item]
        elif item in _SPECS:
            names.append(item)
        else:
            what = f"unknown corruption {item!r}" if item else f"empty corruption list {spec!r}"
            raise ConfigError(f"{what}; choose from: all, all+extra, {', '.join(GROUPS)}, "
                              f"{', '.join(ALL)}")
    return list(dict.fromkeys(names))


def parse_severities(spec: str) -> list[int]:
    """Severities from ``"1-5"``, ``"3"``, ``"1,3,5"`` (or a mix like ``"1-2,5"``), sorted."""
    out: set[int] = set()
    for raw in str(spec).split(","):
        item = raw.strip()
        lo, dash, hi = item.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            a, b = 0, -1
        if not (1 <= a <= b <= 5):
            raise ConfigError(f"bad corruption severities {spec!r}: use integers 1-5, as "
                              "'1-5', '3' or '1,3,5'")
        out.update(range(a, b + 1))
    return sorted(out)
