"""Predict with an ONNX bundle using numpy, onnxruntime and the bundle's preprocessing library
only: no torch.

:class:`BundlePredictor` turns inputs into the graph's feeds with the preprocessor of the bundle's
``preprocessing.kind`` (:data:`PREPROCESSORS`):

- ``image``: graftkit's evaluation preprocessing with PIL (torchvision's ``Resize`` on a PIL image
  *is* ``PIL.Image.resize``, antialiased, and its centre crop is a PIL crop), then scaled to
  [0, 1] and normalised in float32 with the same operations as torchvision, so the input tensor
  matches graftkit's ``eval_transform``;
- ``audio``: soundfile + soxr decoding, graftkit's window and Whisper's log-mel in numpy
  (:mod:`graftkit.data.audio`, the code training uses);
- ``text``: the run's ``tokenizer.json`` with the ``tokenizers`` library (the library under
  transformers' fast tokenizers), truncated at ``max_length`` and padded to the batch's longest
  text, so the token tensors match the run's tokenizer.

Export records the measured difference in bundle.json (see also benchmarks/export_parity.py). The
calibration stored in the bundle (temperature, binary threshold) is applied exactly as
``Run.predict`` does, and the result has the same structure.

A new kind of bundle is one :class:`Preprocessor` subclass registered under its name in
:data:`PREPROCESSORS`: ``from_bundle`` reads what it needs from the bundle, ``load`` names and
decodes one input, ``prepare`` does one input's work, ``collate`` makes a batch's feeds.

This module imports nothing that imports torch (a unit test enforces it): it runs where torch is
not installed, with numpy, onnxruntime and Pillow (images) or tokenizers (texts).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.audio import AudioDataConfig, BadAudio, load_audio, model_input
from ..data.images import BadImage, open_image, resize_size
from ..errors import GraftError
from ..evaluate.multilabel import describe_labels
from ..registry import Registry
from ..threads import thread_count

BUNDLE_JSON = "bundle.json"
BUNDLE_FORMAT = "graftkit-bundle"
# 2: a list of "inputs", the "modality" and preprocessing.kind (1: image bundles, one "input")
BUNDLE_VERSION = 2
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


class BadInput(GraftError):
    """An input the bundle's model cannot take; the message names it and says why."""


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


def bundle_file(bundle_dir: Path, name: Any, key: str) -> Path:
    """The file bundle.json names under ``key``; a name that leads outside the bundle is
    refused."""
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise GraftError(f"{str(bundle_dir / BUNDLE_JSON)!r}: {key} {name!r} must be a file name "
                         "inside the bundle")
    return bundle_dir / name


def read_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """A bundle's bundle.json, checked to be one this graftkit can read (a version 1 bundle is
    read as the image bundle it is)."""
    p = Path(bundle_dir).expanduser()
    f = p / BUNDLE_JSON
    if not f.is_file():
        raise GraftError(f"{str(p)!r} is not an export bundle (no {BUNDLE_JSON})")
    try:
        bundle = json.loads(f.read_text())
    except ValueError as e:
        raise GraftError(f"{str(f)!r} is not valid JSON: {e}") from None
    version = bundle.get("format_version")
    if bundle.get("format") != BUNDLE_FORMAT or version not in (1, BUNDLE_VERSION):
        raise GraftError(f"{str(f)!r} is not a graftkit bundle of format version "
                         f"{BUNDLE_VERSION} (or 1)")
    if version == 1:
        bundle.update(modality="image", inputs=[bundle.pop("input")], preprocessing={
            "kind": "image", **bundle["preprocessing"]})
    bundle_file(p, bundle.get("model_file"), "model_file")
    return bundle


class Preprocessor(ABC):
    """Inputs -> the ONNX graph's feeds, as graftkit preprocesses them, without torch; one
    subclass per ``preprocessing.kind``, registered in :data:`PREPROCESSORS`."""

    compared = ""  # what export's parity check compares it with (bundle.json says)
    files: tuple[str, ...] = ()  # the bundle's files it reads (sha256-checked with the model's)

    @classmethod
    @abstractmethod
    def from_bundle(cls, bundle_dir: Path, bundle: dict[str, Any]) -> Preprocessor:
        """The preprocessor of a bundle (its folder and bundle.json)."""

    @abstractmethod
    def load(self, item: Any) -> tuple[str, Any]:
        """(name, decoded) of one input; :class:`BadInput` for one the model cannot take."""

    def prepare(self, decoded: Any) -> Any:
        """One decoded input's own work (graft serve runs it per input, off the model thread)."""
        return decoded

    @abstractmethod
    def collate(self, prepared: list[Any]) -> dict[str, np.ndarray]:
        """A batch of prepared inputs -> the graph's feeds, by input name."""

    def __call__(self, decoded: list[Any]) -> dict[str, np.ndarray]:
        """A batch of decoded inputs -> the graph's feeds."""
        return self.collate([self.prepare(x) for x in decoded])


PREPROCESSORS: Registry[type[Preprocessor]] = Registry("preprocessing kind")


@PREPROCESSORS.register("image", "PIL + numpy: graftkit's evaluation resize, crop, normalisation")
class ImagePreprocessor(Preprocessor):
    """Image paths or PIL images -> one float32 (N, 3, H, W) input (:func:`preprocess`)."""

    compared = "graftkit.export.light.preprocess (PIL + numpy) vs graftkit's eval transform"

    def __init__(self, pre: dict[str, Any], input_name: str) -> None:
        self.pre, self.input_name = pre, input_name

    @classmethod
    def from_bundle(cls, bundle_dir: Path, bundle: dict[str, Any]) -> ImagePreprocessor:
        return cls(bundle["preprocessing"], bundle["inputs"][0]["name"])

    def load(self, item: Any) -> tuple[str, Image.Image]:
        try:
            return open_image(item)
        except BadImage as e:
            raise BadInput(e.reason) from None

    def prepare(self, decoded: Image.Image) -> np.ndarray:
        return preprocess(decoded, self.pre)  # (3, H, W)

    def collate(self, prepared: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.input_name: np.stack(prepared)}


@PREPROCESSORS.register("text", "tokenizers: the run's tokenizer.json, truncated and padded")
class TextPreprocessor(Preprocessor):
    """Texts -> int64 (N, T) token tensors: truncated at ``max_length``, padded to the batch's
    longest, with the attention mask (and token type ids where the model takes them)."""

    compared = ("token ids and masks of tokenizers' Tokenizer.from_file vs the run's "
                "transformers tokenizer")

    def __init__(self, tokenizer: Any, input_names: list[str], tokenizer_file: str) -> None:
        self.tokenizer, self.input_names = tokenizer, input_names
        self.files = (tokenizer_file,)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, bundle: dict[str, Any]) -> TextPreprocessor:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise GraftError("a text bundle needs tokenizers: pip install tokenizers") from None
        pre = bundle["preprocessing"]
        f = bundle_file(bundle_dir, pre["tokenizer_file"], "preprocessing.tokenizer_file")
        if not f.is_file():
            raise GraftError(f"bundle {str(bundle_dir)!r} lacks its tokenizer "
                             f"{pre['tokenizer_file']}")
        try:
            tok = Tokenizer.from_file(str(f))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own types
            raise GraftError(f"cannot read the tokenizer {str(f)!r}: "
                             f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
        tok.enable_truncation(int(pre["max_length"]), direction=pre["truncation_side"])
        tok.enable_padding(direction=pre["padding_side"], pad_id=int(pre["pad_id"]),
                           pad_type_id=int(pre["pad_type_id"]), pad_token=pre["pad_token"])
        return cls(tok, [i["name"] for i in bundle["inputs"]], pre["tokenizer_file"])

    def load(self, item: Any) -> tuple[str, str]:
        text = str(item)
        if not text.strip():
            raise BadInput("empty text: every input needs some words")
        return text, text

    def collate(self, prepared: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(prepared)
        columns = {"input_ids": lambda e: e.ids, "attention_mask": lambda e: e.attention_mask,
                   "token_type_ids": lambda e: e.type_ids}
        return {n: np.asarray([columns[n](e) for e in enc], dtype=np.int64)
                for n in self.input_names}


@PREPROCESSORS.register("audio", "soundfile + soxr + numpy: graftkit's window and Whisper log-mel")
class AudioPreprocessor(Preprocessor):
    """Sound files (or 16 kHz waveforms) -> ``input`` (N, n_mels, frames) float32 log-mel
    spectrograms (or (N, samples) waveforms) and ``length`` (N,) int64, with graftkit's own
    numpy decoding and log-mel (:mod:`graftkit.data.audio`)."""

    compared = "graftkit.data.audio (numpy) vs the run's dataset input"

    def __init__(self, dc: AudioDataConfig) -> None:
        self.dc = dc

    @classmethod
    def from_bundle(cls, bundle_dir: Path, bundle: dict[str, Any]) -> AudioPreprocessor:
        return cls(AudioDataConfig.from_dict(bundle["preprocessing"]))

    def load(self, item: Any) -> tuple[str, np.ndarray]:
        if isinstance(item, np.ndarray):
            return "waveform", item.astype(np.float32)
        try:
            return str(item), load_audio(item, self.dc.sample_rate)
        except BadAudio as e:
            raise BadInput(e.reason) from None

    def prepare(self, decoded: np.ndarray) -> tuple[np.ndarray, int]:
        return model_input(decoded, self.dc)

    def collate(self, prepared: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
        return {"input": np.stack([x for x, _ in prepared]).astype(np.float32),
                "length": np.asarray([n for _, n in prepared], dtype=np.int64)}


def preprocessor(bundle_dir: str | Path, bundle: dict[str, Any]) -> Preprocessor:
    """The preprocessor of a bundle's ``preprocessing.kind``."""
    return PREPROCESSORS.get(bundle["preprocessing"]["kind"]).from_bundle(Path(bundle_dir),
                                                                          bundle)


class BundlePredictor:
    """Top-k predictions from an ONNX export bundle, like ``Run.predict``, without torch.

    ``threads`` sets onnxruntime's intra-op threads (default: graftkit's one thread setting,
    :func:`graftkit.threads.thread_count`). The sha256 of the model file and of the files the
    preprocessing reads (a tokenizer) are checked against bundle.json unless ``verify=False``.
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
        self.preprocessor = preprocessor(self.path, self.bundle)
        if verify:
            for name in (self.bundle["model_file"], *self.preprocessor.files):
                if sha256(self.path / name) != self.bundle["files"].get(name, {}).get("sha256"):
                    raise GraftError(f"{str(self.path / name)!r} does not match the sha256 in "
                                     f"{BUNDLE_JSON}: the file was changed or damaged")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = thread_count(threads)
        self.session = ort.InferenceSession(str(model_file), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i["name"]: np.dtype(i["dtype"]) for i in self.bundle["inputs"]}
        self.task: str = self.bundle["task"]
        self.classes: list[str] = list(self.bundle["classes"])
        self.preprocessing: dict[str, Any] = self.bundle["preprocessing"]
        cal = self.bundle.get("calibration") or {}
        self.temperature = float(cal.get("temperature") or 1.0)
        self.threshold: float | None = cal.get("threshold")
        self.thresholds: list[float] | None = cal.get("thresholds")  # multilabel: per label

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Raw model outputs (N, K) of a batch's feeds (the preprocessor's), by input name."""
        return self.session.run(None, {n: np.asarray(feeds[n], dtype)
                                       for n, dtype in self.inputs.items()})[0]

    def predict(self, inputs: list[Any] | Any, topk: int = 5, batch_size: int = 8
                ) -> list[dict[str, Any]]:
        """Top-k classes with probabilities (or the value, for regression) for each input: image
        paths or PIL images, or texts, as the bundle's model takes. Raises :class:`BadInput` for
        an unusable one (an unreadable image, an empty text)."""
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            named = [self.preprocessor.load(it) for it in items[start:start + batch_size]]
            feeds = self.preprocessor([x for _, x in named])
            for (name, _), row in zip(named, self.logits(feeds)):
                results.append(self.describe(name, row, topk))
        return results

    def describe(self, name: str, row: np.ndarray, topk: int) -> dict[str, Any]:
        if self.task == "regression":
            ts = self.bundle.get("target_stats") or {}
            return {"input": name,
                    "value": float(row[0]) * ts.get("std", 1.0) + ts.get("mean", 0.0)}
        if self.task == "multilabel":
            probs = 1 / (1 + np.exp(-row.astype(np.float64) / self.temperature))
            return describe_labels(name, probs, self.classes, self.thresholds, topk)
        probs = softmax(row, self.temperature)
        if self.threshold is not None and len(probs) == 2:
            idx = int(probs[1] >= self.threshold)
        else:
            idx = int(np.argmax(probs))
        order = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
        top = [{"label": self.classes[int(i)], "prob": float(probs[i])} for i in order]
        return {"input": name, "label": self.classes[idx], "prob": float(probs[idx]), "top": top}
