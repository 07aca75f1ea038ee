"""Explaining an image model's decisions: one image (:func:`explain_image`), files with overlays
and JSON records (:func:`explain_images`), the report's Grad-CAM gallery (:func:`gradcam_overlays`).
Everything here takes the model (or a run handle holding it); nothing reloads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import run as rd
from ..data.images import BadImage, load_image
from ..data.transforms import eval_transform
from ..errors import DataError, GraftError
from ..evaluate.calibration import Calibration
from .faithfulness import faithfulness
from .methods import CAM_BATCH, METHODS, explain_batch
from .overlay import model_view, overlay


@dataclass
class Explained:
    x: torch.Tensor
    probs: torch.Tensor  # calibrated
    predicted: int
    target: int
    heatmap: np.ndarray


def _load(path: Path) -> Image.Image:
    try:
        return load_image(path)
    except BadImage as e:
        raise DataError(f"{path}: {e.reason}") from None


def _decisions(model: Any, cal: Calibration, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The calibrated probabilities (B, K) of the images ``x`` (B, C, H, W), :data:`CAM_BATCH`
    at a time, and each image's decided class; multi-label: the most probable label stands for
    the decision (each label can be a target)."""
    with torch.inference_mode():
        logits = torch.cat([model(x[i:i + CAM_BATCH].contiguous(
            memory_format=torch.channels_last)).float() for i in range(0, len(x), CAM_BATCH)])
    probs = cal.probs(logits)
    decided = probs.argmax(1) if cal.multilabel else cal.decide(probs.numpy())
    return probs, [int(c) for c in decided]


def explain_image(model: Any, cal: Calibration, image: Image.Image, method: str,
                 target: int | None) -> Explained:
    x = eval_transform(model.data_config)(image)[None]
    probs, (predicted,) = _decisions(model, cal, x)
    t = predicted if target is None else target
    return Explained(x, probs[0], predicted, t, METHODS.get(method)(model, x, t))


def explain_images(run: Any, files: list[str], method: str, target: str | None,
                   out_dir: Path, topk: int = 3) -> list[dict[str, Any]]:
    """For each image file, ``<out_dir>/<stem>.<method>.png`` (the heatmap over the model's view)
    and ``<stem>.json``: the top-k classes with calibrated probabilities, the explained class
    (``target``, default the predicted one), the method and the deletion/insertion scores
    (:func:`graftkit.explain.faithfulness`). ``run`` is a run handle (``model``, ``classes``,
    ``calibration``). Every input is checked before anything is written."""
    METHODS.get(method)
    classes = run.classes
    if target is not None and target not in classes:
        raise GraftError(f"unknown class {target!r}; this run's classes: {', '.join(classes)}")
    paths = [Path(f) for f in files]
    for f in paths:  # decoded twice, not held: a folder of photos may not fit in memory
        _load(f)
    model, cal = run.model, run.calibration
    out, stems = Path(out_dir), rd.unique_stems(paths)
    rd.claim_outputs(out, [n for st in stems for n in (f"{st}.{method}.png", f"{st}.json")])
    records = []
    for f, stem in zip(paths, stems):
        image = _load(f)
        e = explain_image(model, cal, image, method,
                          None if target is None else classes.index(target))
        png = out / f"{stem}.{method}.png"
        label, prob = classes[e.predicted], float(e.probs[e.predicted])
        overlay(model_view(image, model.data_config), e.heatmap, label, prob, method=method,
                target=classes[e.target]).save(png)
        p, idx = e.probs.topk(min(topk, len(classes)))
        record = {
            "input": str(f), "method": method, "predicted": label, "prob": prob,
            "target": classes[e.target], "target_prob": float(e.probs[e.target]),
            "top": [{"label": classes[int(i)], "prob": float(v)} for v, i in zip(p, idx)],
            "faithfulness": faithfulness(model, e.x, e.heatmap, e.target,
                                         multilabel=cal.multilabel),
            "overlay": str(png),
        }
        rd.write_json(out / f"{stem}.json", record)
        records.append(record)
    return records


def gradcam_overlays(model: Any, classes: list[str], cal: Calibration, items: list[str],
                     out_dir: str | Path) -> dict[str, Path]:
    """Grad-CAM overlays of the predicted class for the report's example images.

    Writes ``<out_dir>/<nnn>-<stem>.gradcam.png`` and returns ``{item: png path}``; items that
    cannot be read are left out (the report shows them without an overlay), as are all items
    of a model Grad-CAM cannot explain.
    """
    out = Path(out_dir)
    loaded: list[tuple[int, str, Image.Image]] = []
    for i, item in enumerate(items):
        try:
            loaded.append((i, item, load_image(item)))
        except BadImage:
            continue
    if not loaded:
        return {}
    tf = eval_transform(model.data_config)
    x = torch.stack([tf(image) for _, _, image in loaded])
    probs, predicted = _decisions(model, cal, x)
    try:  # the whole gallery in one Grad-CAM pass (or a few), not one per image
        maps = explain_batch(model, x, predicted, "gradcam")
    except GraftError:  # no feature map to read (see methods.cam_layer): nothing to show
        return {}
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for (i, item, image), heatmap, c, p in zip(loaded, maps, predicted, probs):
        png = out / f"{i:03d}-{rd.safe_name(Path(item).stem)}.gradcam.png"
        overlay(model_view(image, model.data_config), heatmap, classes[c], float(p[c]),
                method="gradcam").save(png)
        written[item] = png
    return written
