"""What the server runs: a run directory (torch, exactly ``graft predict``'s path) or an ONNX export
bundle (onnxruntime, :class:`graftkit.export.light.BundlePredictor`, no torch needed).

A backend splits prediction in the three steps the server schedules separately:

- ``prepare(image or text)``: per input, in a request's worker thread (decode-side work);
- ``forward(list of prepared)``: one batched model call, in the model thread (the micro-batcher);
- ``describe(row, topk)``: the calibrated top-k, as ``graft predict`` reports it.

``decode_side`` is the shorter side the preprocessing resizes an image to (0: not known, or not
an image model): an upload much larger than that may be decoded at reduced scale.

Opening a backend (``open_backend``) only reads and checks files; ``load()`` does the heavy part
(weights, session) and runs in the background while ``/readyz`` says "loading".
"""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import modalities
from ..errors import GraftError
from ..evaluate.reference import read_reference


class RunBackend:
    """A run directory, served with its torch model, preprocessing and calibration."""

    source = "run"

    def __init__(self, path: Path) -> None:
        from .. import run as rd
        from ..inference import LoadedRun
        from ..train.checkpoint import check_readable

        self.run = LoadedRun(path)
        meta = self.run.meta
        if not (self.run.path / rd.WEIGHTS).is_file():
            raise GraftError(f"run {str(path)!r} has no {rd.WEIGHTS} (did training finish an "
                             "epoch?)")
        check_readable(self.run.path / rd.WEIGHTS)  # damaged: refused before listening
        self.path, self.meta = self.run.path, meta
        self.modality = self.run.modality
        self.task: str = meta["task"]
        self.classes: list[str] = list(meta.get("classes") or [])
        self.name: str = meta["model"]["name"]
        self.explainable = self.modality.explainable and (
            self.task == "classification" or
            self.task == "multilabel" and self.modality.explains_labels)
        self.model: Any = None
        self.decode_side = 0

    def load(self) -> None:
        if self.model is not None:
            return
        self.model = self.run.model
        self.cal = self.run.calibration
        self.view = self.modality.model_view(self.model)
        dc = self.model.data_config  # an image model's says how it resizes (timm's eval recipe)
        if getattr(dc, "input_size", 0) and getattr(dc, "crop_pct", 0):
            self.decode_side = int(round(dc.input_size / dc.crop_pct))

    def prepare(self, item: Any) -> Any:
        return self.view(item)  # an image: (C, H, W)

    def forward(self, batch: list[Any]) -> list[Any]:
        import torch

        with torch.inference_mode():
            out = self.model(self.modality.batch(self.model, batch))  # (B, K)
        return list(out.float())

    def describe(self, row: Any, topk: int) -> dict[str, Any]:
        from ..inference import describe

        d = describe("", row, self.meta, topk, self.cal)
        d.pop("input")
        return d

    def warmup(self) -> None:
        size = getattr(self.model.data_config, "input_size", 0)
        self.forward([self.prepare(self.modality.warmup_input(size))])

    def reference(self) -> dict[str, Any]:
        """Stored in the run, or computed now from its validation split (older runs)."""
        from ..inference import ensure_reference

        return ensure_reference(self.run)

    def has_reference(self) -> bool:
        return read_reference(self.path) is not None

    def explain(self, image: Image.Image, topk: int) -> dict[str, Any]:
        """Grad-CAM of the predicted class: the top-k and the overlay as a PNG data URI."""
        from ..explain.images import explain_image
        from ..explain.overlay import model_view, overlay

        e = explain_image(self.model, self.cal, image, "gradcam", None)
        label, prob = self.classes[e.predicted], float(e.probs[e.predicted])
        png = overlay(model_view(image, self.model.data_config), e.heatmap, label, prob,
                      method="gradcam")
        buf = io.BytesIO()
        png.save(buf, format="PNG")
        p, idx = e.probs.topk(min(topk, len(self.classes)))
        return {"label": label, "prob": prob, "method": "gradcam",
                "top": [{"label": self.classes[int(i)], "prob": float(v)} for v, i in zip(p, idx)],
                "overlay": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}


class BundleBackend:
    """An ONNX export bundle, served with onnxruntime and the bundle's preprocessing (its
    preprocessor: an image's resize and crop per input, a batch of texts tokenized together) and
    calibration (the same numbers as ``BundlePredictor.predict``)."""

    source = "onnx-bundle"
    explainable = False

    def __init__(self, path: Path) -> None:
        from ..data.images import resize_size
        from ..export.light import read_bundle

        bundle = read_bundle(path)
        if bundle["model_format"] != "onnx":
            raise GraftError(f"{str(path)!r} holds a {bundle['model_format']} model; graft serve "
                             "runs ONNX bundles (graft export --format onnx) or run directories")
        if importlib.util.find_spec("onnxruntime") is None:
            raise GraftError("serving an ONNX bundle needs onnxruntime: pip install "
                             "'graftkit[export]'")
        self.path, self.bundle = path, bundle
        self.modality = modalities.get(bundle.get("modality") or modalities.DEFAULT)
        self.task: str = bundle["task"]
        self.classes: list[str] = list(bundle.get("classes") or [])
        self.name: str = bundle["model"]["name"]
        self.predictor: Any = None
        pre = bundle.get("preprocessing") or {}
        self.decode_side = resize_size(pre) if pre.get("input_size") and pre.get("crop_pct") \
            else 0

    def load(self) -> None:
        from ..export.light import BundlePredictor

        if self.predictor is None:
            self.predictor = BundlePredictor(self.path)

    def prepare(self, item: Any) -> Any:
        return self.predictor.preprocessor.prepare(item)  # an image: (3, H, W) float32

    def forward(self, batch: list[Any]) -> list[np.ndarray]:
        return list(self.predictor.logits(self.predictor.preprocessor.collate(batch)))

    def describe(self, row: np.ndarray, topk: int) -> dict[str, Any]:
        d = self.predictor.describe("", row, topk)
        d.pop("input")
        return d

    def warmup(self) -> None:
        size = int(self.bundle["preprocessing"].get("input_size", 0))  # an image model's
        self.forward([self.prepare(self.modality.warmup_input(size))])

    def reference(self) -> dict[str, Any]:
        ref = read_reference(self.path)
        if ref is None:
            raise GraftError("this bundle holds no reference.json (exported before graft "
                             "serve existed); export the run again to monitor drift")
        return ref

    def has_reference(self) -> bool:
        return read_reference(self.path) is not None

    def explain(self, image: Image.Image, topk: int) -> dict[str, Any]:
        raise GraftError("Grad-CAM needs the torch model: serve the run directory")


Backend = RunBackend | BundleBackend


def open_backend(path: str | Path) -> Backend:
    """The backend for a run directory or an ONNX bundle; a one-line :class:`GraftError` for
    anything else. Reads files only: the model loads with ``load()``."""
    from ..export.light import BUNDLE_JSON
    from ..run import META

    p = Path(path).expanduser()
    if not p.exists():
        raise GraftError(f"{str(p)!r} does not exist; give a run directory or an export bundle")
    if not p.is_dir():
        raise GraftError(f"{str(p)!r} is a file; give a run directory or an export bundle folder")
    if (p / BUNDLE_JSON).is_file():
        return BundleBackend(p)
    if (p / META).is_file():
        return RunBackend(p)
    raise GraftError(f"{str(p)!r} is neither a run directory (no {META}) nor an export bundle "
                     f"(no {BUNDLE_JSON})")
