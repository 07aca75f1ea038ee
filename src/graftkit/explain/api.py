"""Explaining a finished run's decisions: overlays and JSON records for image files, CLI lines.
Text runs are handed to :mod:`graftkit.explain.text_run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import run as rd
from ..data.images import IMAGE_EXTENSIONS, BadImage, load_image
from ..data.transforms import eval_transform
from ..errors import DataError, GraftError
from ..evaluate.calibration import Calibration
from .faithfulness import faithfulness
from .methods import METHODS
from .overlay import model_view, overlay
from .text import TEXT_METHODS


@dataclass
class _Explained:
    x: torch.Tensor
    probs: torch.Tensor  # calibrated
    predicted: int
    target: int
    heatmap: np.ndarray


def _classification_run(run: Any) -> Any:
    """The run (a :class:`graftkit.api.Run` or its directory), if it is a classification run."""
    from ..api import Run

    run = run if isinstance(run, Run) else Run(run)
    if run.meta["task"] != "classification":
        raise GraftError(f"explain is for classification runs; {str(run.path)!r} is "
                         f"{run.meta['task']}")
    return run


def _image_run(run: Any) -> Any:
    """The run, if it is an image classification run (Grad-CAM overlays need images)."""
    run = _classification_run(run)
    modality = run.meta.get("modality", "image")
    if modality != "image":
        raise GraftError(f"explain overlays are for image runs; {str(run.path)!r} is a "
                         f"{modality} run")
    return run


def _is_text(run: Any) -> bool:
    return run.meta.get("modality", "image") == "text"


def _expand(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (recursively, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{item}: no images in this folder")
            files += found
        else:
            files.append(item)
    if not files:
        raise DataError("no input images given")
    return files


def _load(path: Path) -> Image.Image:
    try:
        return load_image(path)
    except BadImage as e:
        raise DataError(f"{path}: {e.reason}") from None


def _explain_one(model: Any, cal: Calibration, image: Image.Image, method: str,
                 target: int | None) -> _Explained:
    x = eval_transform(model.data_config)(image)[None]
    with torch.inference_mode():
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
    probs = cal.probs(logits)[0]
    predicted = int(cal.decide(probs[None].numpy())[0])
    t = predicted if target is None else target
    return _Explained(x, probs, predicted, t, METHODS.get(method)(model, x, t))


def _unique_stems(files: list[Path]) -> list[str]:
    """File stems, with ``-2``, ``-3``... appended where two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        stems.append(f.stem if seen[f.stem] == 1 else f"{f.stem}-{seen[f.stem]}")
    return stems


def explain_run(run_dir: str | Path, inputs: list[str | Path], method: str | None = None,
                target: str | None = None, *, out_dir: str | Path, topk: int = 3,
                texts: list[str] | None = None) -> list[dict[str, Any]]:
    """Explain a run's decision on each input image (files or folders of images).

    For each image, writes ``<out_dir>/<stem>.<method>.png`` (the heatmap over the model's view)
    and ``<stem>.json``: the top-k classes with calibrated probabilities, the explained class
    (``target``, default the predicted one), the method (default ``gradcam``) and the
    deletion/insertion scores (:func:`graftkit.explain.faithfulness`). Returns those records.
    Every input is checked before anything is written, so a bad file fails fast.

    A text run explains ``texts`` and the texts in ``inputs`` (.txt/.csv files) with
    integrated gradients instead: see :func:`graftkit.explain.text_run.explain_text_run`.
    """
    if method is not None and method not in TEXT_METHODS:
        METHODS.get(method)  # an unknown method fails before the model loads
    run = _classification_run(run_dir)
    if _is_text(run):
        from .text_run import explain_text_run

        return explain_text_run(run, inputs, list(texts or []), method or TEXT_METHODS[0],
                                target, out_dir=out_dir, topk=topk)
    if texts:
        raise GraftError(f"--text is for text runs; {str(run.path)!r} is an image run")
    method = method or "gradcam"
    METHODS.get(method)
    run = _image_run(run)
    classes = run.classes
    if target is not None and target not in classes:
        raise GraftError(f"unknown class {target!r}; this run's classes: {', '.join(classes)}")
    files = _expand(inputs)
    for f in files:  # decoded twice, not held: a folder of photos may not fit in memory
        _load(f)
    model, cal = run.model, Calibration.from_meta(run.meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for f, stem in zip(files, _unique_stems(files)):
        image = _load(f)
        e = _explain_one(model, cal, image, method,
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
            "faithfulness": faithfulness(model, e.x, e.heatmap, e.target),
            "overlay": str(png),
        }
        rd.write_json(out / f"{stem}.json", record)
        records.append(record)
    return records


def gradcam_overlays(run: Any, items: list[str], out_dir: str | Path) -> dict[str, Path]:
    """Grad-CAM overlays of the predicted class for the report's example images.

    ``run`` is a :class:`graftkit.api.Run` or its directory. Writes ``<out_dir>/<nnn>-<stem>
    .gradcam.png`` and returns ``{item: png path}``; items that cannot be read are left out
    (the report shows them without an overlay), as are all items of a model Grad-CAM cannot
    explain.
    """
    run = _image_run(run)
    model, cal = run.model, Calibration.from_meta(run.meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for i, item in enumerate(items):
        try:
            image = load_image(item)
        except BadImage:
            continue
        try:
            e = _explain_one(model, cal, image, "gradcam", None)
        except GraftError:  # no feature map to read (see methods.cam_layer): nothing to show
            return written
        png = out / f"{i:03d}-{rd.safe_name(Path(item).stem)}.gradcam.png"
        overlay(model_view(image, model.data_config), e.heatmap, run.classes[e.predicted],
                float(e.probs[e.predicted]), method="gradcam").save(png)
        written[item] = png
    return written


def cli_explain(run_dir: str | Path, inputs: list[str | Path], method: str | None = None,
                target: str | None = None, out: str | Path | None = None, topk: int = 3,
                texts: list[str] | None = None) -> None:
    """``graft explain``: explain each input and print one line per image or text. ``out``
    defaults to ``explain/<run folder name>`` under the current folder."""
    out_dir = Path(out) if out else Path("explain") / Path(run_dir).expanduser().resolve().name
    records = explain_run(run_dir, inputs, method, target, out_dir=out_dir, topk=topk,
                          texts=texts)
    for r in records:
        f = r["faithfulness"]
        verdict = "better than" if f["beats_random"] else "NOT better than"
        print(f"{r.get('overlay') or r['html']}  predicted: {r['predicted']} ({r['prob']:.2f})  "
              f"{r['method']} of {r['target']}: deletion AUC {f['deletion_auc']:.3f} vs random "
              f"{f['deletion_auc_random']:.3f} ({verdict} random)")
    if records and "html" in records[0]:
        print(f"{len(records)} text(s) explained; HTML and JSON in {out_dir} (all: "
              f"{out_dir / 'index.html'})")
    else:
        print(f"{len(records)} image(s) explained; overlays and JSON in {out_dir}")
