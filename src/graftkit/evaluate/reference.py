"""The training reference a served model's live traffic is compared with (``graft serve``'s
drift monitor): ``RUN_DIR/reference.json``, also copied into export bundles.

It summarises the model's behaviour on the validation split, the data it was selected on:

    {"format": 1, "split": "val", "n": 153, "task": "classification", "modality": "image",
     "classes": [...],
     "predicted": {"ants": 0.52, "bees": 0.48},      fraction of val predicted as each class
     "labels": {"ants": 0.46, "bees": 0.54},         true label fractions (for reading only)
     "confidence": {"mean", "std", "edges", "hist"}, calibrated top probability (hist: fractions)
     "value": {"mean", "std"},                       regression runs instead of the three above
     "inputs": {"n": 153, "brightness": {"mean", "std"}, "width": ..., "height": ...}
               (text: "chars" and "words")}

Training writes it at the end (:func:`write_reference` from the validation analysis); a run made
before that gets it computed on demand from its own validation split (:func:`ensure_reference`).
The input statistics are cheap on purpose: they are computed for every served request too
(:func:`image_stats`, :func:`text_stats`; numpy and Pillow only, no torch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REFERENCE = "reference.json"
FORMAT = 1
CONF_EDGES = [round(0.1 * i, 1) for i in range(11)]  # confidence histogram bins, [0, 1]
MAX_INPUT_SAMPLES = 200  # images decoded for the input statistics (spread over the split)
_THUMB = 64  # brightness is measured on a thumbnail: cheap, and the mean hardly changes


def image_stats(img: Image.Image) -> dict[str, float]:
    """Mean brightness (0..1, of the grayscale image) and size of one RGB image."""
    small = img.copy()
    small.thumbnail((_THUMB, _THUMB))
    gray = np.asarray(small.convert("L"), dtype=np.float32)
    return {"brightness": float(gray.mean() / 255.0), "width": float(img.width),
            "height": float(img.height)}


def text_stats(text: str) -> dict[str, float]:
    return {"chars": float(len(text)), "words": float(len(text.split()))}


def confidence_hist(conf: np.ndarray) -> list[float]:
    """Fractions of ``conf`` in the CONF_EDGES bins (the last bin includes 1.0)."""
    if len(conf) == 0:
        return [0.0] * (len(CONF_EDGES) - 1)
    counts, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=CONF_EDGES)
    return (counts / counts.sum()).tolist()


def _moments(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))} if len(x) else {
        "mean": 0.0, "std": 0.0}


def input_reference(items: list[str], modality: str) -> dict[str, Any]:
    """Mean and std of the input statistics over (a spread-out sample of) ``items``: image paths,
    or texts. Unreadable images are left out."""
    from ..data.images import BadImage, load_image

    step = max(1, len(items) // MAX_INPUT_SAMPLES) if modality == "image" else 1
    rows: list[dict[str, float]] = []
    for item in items[::step]:
        if modality == "text":
            rows.append(text_stats(str(item)))
            continue
        try:
            rows.append(image_stats(load_image(item)))
        except BadImage:
            continue
    keys = ["chars", "words"] if modality == "text" else ["brightness", "width", "height"]
    return {"n": len(rows), **{k: _moments(np.array([r[k] for r in rows])) for k in keys}}


def build_reference(task: str, modality: str, classes: list[str], items: list[str],
                    targets: np.ndarray, probs: np.ndarray | None = None,
                    pred: np.ndarray | None = None, split: str = "val") -> dict[str, Any]:
    """The reference of one labeled split: ``probs`` (N, K) calibrated probabilities and
    ``pred`` the decided class indices (classification), or ``pred`` the predicted values
    (regression)."""
    ref: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "split": split, "n": int(len(targets)), "task": task,
                           "modality": modality, "classes": list(classes)}
    if task == "classification":
        assert probs is not None and pred is not None
        k = len(classes)
        pred_frac = np.bincount(pred.astype(np.int64), minlength=k) / max(1, len(pred))
        label_frac = np.bincount(targets.astype(np.int64), minlength=k) / max(1, len(targets))
        conf = probs[np.arange(len(pred)), pred.astype(np.int64)]
        ref["predicted"] = dict(zip(classes, map(float, pred_frac)))
        ref["labels"] = dict(zip(classes, map(float, label_frac)))
        ref["confidence"] = {**_moments(conf), "edges": CONF_EDGES,
                             "hist": confidence_hist(conf)}
    else:
        assert pred is not None
        ref["value"] = _moments(np.asarray(pred, dtype=np.float64))
    ref["inputs"] = input_reference(items, modality)
    return ref


def from_analysis(a: Any, modality: str, split: str = "val") -> dict[str, Any]:
    """The reference of a :class:`graftkit.evaluate.analysis.Analysis`."""
    return build_reference(a.task, modality, a.classes, a.items, a.targets, a.probs, a.pred,
                           split)


def write_reference(run_dir: Path, ref: dict[str, Any]) -> Path:
    from ..run import write_json

    write_json(run_dir / REFERENCE, ref)
    return run_dir / REFERENCE


def read_reference(folder: Path) -> dict[str, Any] | None:
    import json

    f = folder / REFERENCE
    if not f.is_file():
        return None
    try:
        ref = json.loads(f.read_text())
    except ValueError:
        return None
    return ref if isinstance(ref, dict) and ref.get("format") == FORMAT else None


def ensure_reference(run: Any, write: bool = True) -> dict[str, Any]:
    """The run's reference: read from the run directory, or computed from its validation split
    (a run made before references were written) and, if ``write``, stored there; a run folder
    that cannot be written to just does not keep it. Raises :class:`GraftError` when the
    validation data is not available."""
    from ..evaluate.analysis import analyze
    from ..evaluate.calibration import Calibration
    from ..inference import _outputs, _run_split

    ref = read_reference(run.path)
    if ref is not None:
        return ref
    meta = run.meta
    items, _, used = _run_split(run.config, meta, "val")
    outputs, targets = _outputs(run, items)
    a = analyze(outputs, targets, meta["task"], meta["classes"], Calibration.from_meta(meta),
                items=[str(p) for p, _ in items])
    ref = from_analysis(a, meta.get("modality", "image"), used)
    if write:
        try:
            write_reference(run.path, ref)
        except OSError:
            pass  # a read-only run: serve with the reference in memory
    return ref
