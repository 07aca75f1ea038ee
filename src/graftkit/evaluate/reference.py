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
before that gets it computed on demand from its own validation split
(:func:`graftkit.inference.ensure_reference`).
The input statistics are the modality's (``Modality.input_stats``); cheap on purpose, they are
computed for every served request too. This module only summarises: it knows no modality.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import run as rd

REFERENCE = rd.REFERENCE
FORMAT = 1
CONF_EDGES = [round(0.1 * i, 1) for i in range(11)]  # confidence histogram bins, [0, 1]


def confidence_hist(conf: np.ndarray) -> list[float]:
    """Fractions of ``conf`` in the CONF_EDGES bins (the last bin includes 1.0)."""
    if len(conf) == 0:
        return [0.0] * (len(CONF_EDGES) - 1)
    counts, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=CONF_EDGES)
    return (counts / counts.sum()).tolist()


def _moments(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))} if len(x) else {
        "mean": 0.0, "std": 0.0}


def build_reference(task: str, modality: str, classes: list[str], inputs: dict[str, Any],
                    targets: np.ndarray, probs: np.ndarray | None = None,
                    pred: np.ndarray | None = None, split: str = "val") -> dict[str, Any]:
    """The reference of one labeled split: ``probs`` (N, K) calibrated probabilities and
    ``pred`` the decided class indices (classification), or ``pred`` the predicted values
    (regression); ``inputs`` the modality's input statistics of the split."""
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
    elif task == "multilabel":  # the share of each label among all decided labels
        assert probs is not None and pred is not None
        decided, true = pred.astype(bool), targets.astype(bool)
        conf = np.where(decided, probs, 1 - probs).mean(1)
        ref["predicted"] = dict(zip(classes, map(float, decided.sum(0) / max(1, decided.sum()))))
        ref["labels"] = dict(zip(classes, map(float, true.sum(0) / max(1, true.sum()))))
        ref["label_rate"] = dict(zip(classes, map(float, decided.mean(0))))
        ref["confidence"] = {**_moments(conf), "edges": CONF_EDGES,
                             "hist": confidence_hist(conf)}
    else:
        assert pred is not None
        ref["value"] = _moments(np.asarray(pred, dtype=np.float64))
    ref["inputs"] = inputs
    return ref


def from_analysis(a: Any, modality: Any, split: str = "val") -> dict[str, Any]:
    """The reference of a :class:`graftkit.evaluate.analysis.Analysis` of a split of inputs of
    ``modality`` (a :class:`graftkit.modalities.Modality`)."""
    return build_reference(a.task, modality.name, a.classes, modality.input_reference(a.items),
                           a.targets, a.probs, a.pred, split)


def write_reference(run_dir: Path, ref: dict[str, Any]) -> Path:
    rd.write_json(run_dir / REFERENCE, ref)
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
