"""Predict with an ONNX bundle using numpy, Pillow and onnxruntime only: no torch.

:class:`BundlePredictor` reproduces graftkit's evaluation preprocessing with PIL (torchvision's
``Resize`` on a PIL image *is* ``PIL.Image.resize``, antialiased, and its centre crop is a PIL
crop), then scales to [0, 1] and normalises in float32 with the same operations as torchvision,
so the input tensor matches graftkit's ``eval_transform`` (export records the measured
difference in bundle.json; see also benchmarks/export_parity.py). The calibration stored in the
bundle (temperature, binary threshold) is applied exactly as ``Run.predict`` does, and the result
has the same structure.

This module imports nothing that imports torch (a unit test enforces it): it runs where torch is
not installed, with numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import BadImage, open_image
from ..errors import GraftError
from ..threads import thread_count

BUNDLE_JSON = "bundle.json"
BUNDLE_FORMAT = "graftkit-bundle"
BUNDLE_VERSION = 1
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


class BadInput(GraftError):
    """An input that cannot be used as an image; the message names it and says why."""


def interpolation(name: str) -> str:
    """The interpolation graftkit really applies for a data config's name (anything but
    bicubic/nearest is bilinear, as in ``graftkit.data.transforms``)."""
    return name if name in _RESAMPLE else "bilinear"


def resize_size(pre: dict[str, Any]) -> int:
    """The short side an image is resized to before the centre crop."""
    return int(round(pre["input_size"] / pre["crop_pct"]))


def _resized(w: int, h: int, short_side: int) -> tuple[int, int]:
    # torchvision's rule for an int size: the short side becomes ``short_side`` and the long
    # side int(short_side * long / short), truncated.
    if w <= h:
        return short_side, int(short_side * h / w)
    return int(short_side * w / h), short_side


def _crop_start(size: int, crop: int) -> int:
    # torchvision pads symmetrically (the extra pixel on the right/bottom) when the crop is larger
    # than the image, otherwise it starts at round((size - crop) / 2), half to even.
    return -((crop - size) // 2) if crop > size else int(round((size - crop) / 2.0))


def preprocess(img: Image.Image, pre: dict[str, Any]) -> np.ndarray:
    """An RGB PIL image -> the (3, H, W) float32 model input (graftkit's eval transform)."""
    size = int(pre["input_size"])
    new = _resized(img.width, img.height, resize_size(pre))
    if new != img.size:
        img = img.resize(new, resample=_RESAMPLE.get(pre["interpolation"],
                                                     Image.Resampling.BILINEAR))
    left, top = _crop_start(img.width, size), _crop_start(img.height, size)
    img = img.crop((left, top, left + size, top + size))  # outside the image: zeros, as padding
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255)
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """A bundle's bundle.json, checked to be one this graftkit can read."""
    p = Path(bundle_dir).expanduser()
    f = p / BUNDLE_JSON
    if not f.is_file():
        raise GraftError(f"{str(p)!r} is not an export bundle (no {BUNDLE_JSON})")
    try:
        bundle = json.loads(f.read_text())
    except ValueError as e:
        raise GraftError(f"{str(f)!r} is not valid JSON: {e}") from None
    if bundle.get("format") != BUNDLE_FORMAT or bundle.get("format_version") != BUNDLE_VERSION:
        raise GraftError(f"{str(f)!r} is not a graftkit bundle of format version "
                         f"{BUNDLE_VERSION}")
    name = bundle.get("model_file")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise GraftError(f"{str(f)!r}: model_file {name!r} must be a file name inside the bundle")
    return bundle


def _as_image(item: Any) -> tuple[str, Image.Image]:
    try:
        return open_image(item)
    except BadImage as e:
        raise BadInput(e.reason) from None


class BundlePredictor:
    """Top-k predictions from an ONNX export bundle, like ``Run.predict``, without torch.

    ``threads`` sets onnxruntime's intra-op threads (default: graftkit's one thread setting,
    :func:`graftkit.threads.thread_count`). The model file's
    sha256 is checked against bundle.json unless ``verify=False``.
    """

    def __init__(self, bundle_dir: str | Path, threads: int | None = None,
                 verify: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise GraftError("BundlePredictor needs onnxruntime: pip install onnxruntime") from None
        self.path = Path(bundle_dir).expanduser()
        self.bundle = read_bundle(self.path)
        if self.bundle["model_format"] != "onnx":
            raise GraftError(f"{str(self.path)!r} holds a {self.bundle['model_format']} model; "
                             "BundlePredictor runs ONNX bundles (export with --format onnx)")
        model_file = self.path / self.bundle["model_file"]
        if not model_file.is_file():
            raise GraftError(f"bundle {str(self.path)!r} lacks its model file {model_file.name}")
        if verify and sha256(model_file) != self.bundle["files"][model_file.name]["sha256"]:
            raise GraftError(f"{str(model_file)!r} does not match the sha256 in {BUNDLE_JSON}: "
                             "the file was changed or damaged")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = thread_count(threads)
        self.session = ort.InferenceSession(str(model_file), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.bundle["input"]["name"]
        self.task: str = self.bundle["task"]
        self.classes: list[str] = list(self.bundle["classes"])
        self.preprocessing: dict[str, Any] = self.bundle["preprocessing"]
        cal = self.bundle.get("calibration") or {}
        self.temperature = float(cal.get("temperature") or 1.0)
        self.threshold: float | None = cal.get("threshold")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs of an (N, 3, H, W) float32 batch of preprocessed images."""
        return self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]

    def predict(self, inputs: list[Any] | Any, topk: int = 5, batch_size: int = 8
                ) -> list[dict[str, Any]]:
        """Top-k classes with probabilities (or the value, for regression) for each input:
        image paths or PIL images. Raises :class:`BadInput` for an unusable image."""
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            named = [_as_image(it) for it in items[start:start + batch_size]]
            x = np.stack([preprocess(img, self.preprocessing) for _, img in named])
            for (name, _), row in zip(named, self.logits(x)):
                results.append(self.describe(name, row, topk))
        return results

    def describe(self, name: str, row: np.ndarray, topk: int) -> dict[str, Any]:
        if self.task == "regression":
            ts = self.bundle.get("target_stats") or {}
            return {"input": name,
                    "value": float(row[0]) * ts.get("std", 1.0) + ts.get("mean", 0.0)}
        probs = softmax(row, self.temperature)
        if self.threshold is not None and len(probs) == 2:
            idx = int(probs[1] >= self.threshold)
        else:
            idx = int(np.argmax(probs))
        order = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
        top = [{"label": self.classes[int(i)], "prob": float(probs[i])} for i in order]
        return {"input": name, "label": self.classes[idx], "prob": float(probs[idx]), "top": top}
