"""``graft robustness``: a run's accuracy under the ImageNet-C corruptions (image runs) or the
text perturbations (text runs), written to the run.

    RUN_DIR/robustness/
      results.json              accuracy per corruption x severity, mCA, relative robustness,
                                CE / mCE / relative mCE against --reference (when given)
      accuracy_vs_severity.png  heatmap.png
      examples.png              images: one image at every corruption and severity
                                texts: a table of one text at every perturbation and severity
      examples.html             texts: the same table, as a page (also in results.json)

Images are corrupted as the model sees them (after the evaluation resize and centre crop, as
ImageNet-C corrupts 224 px crops), then normalised. Texts are perturbed as read, before
tokenization. The evaluation report of the same data and split is written again so that it
shows the robustness section.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import run as rd
from ..errors import DataError, GraftError

RESULTS = "results.json"


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so results.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _subset(items: list[tuple[str, float]], limit: int | None, seed: int
            ) -> list[tuple[str, float]]:
    if not limit or limit >= len(items):
        return items
    picked = random.Random(seed).sample(range(len(items)), limit)
    return [items[i] for i in sorted(picked)]


def _reference(reference: str | Path | None, names: list[str], sevs: list[int]
               ) -> dict[str, Any] | None:
    """The reference run's robustness results, checked to cover ``names`` x ``sevs``."""
    from ..evaluate.report import robustness_results

    if reference is None:
        return None
    ref_path = rd.check_run_dir(reference)
    ref = robustness_results(ref_path)
    if ref is None:
        raise GraftError(f"the reference run {str(ref_path)!r} has no robustness results; "
                         f"run graft robustness on it first")
    lacking = [n for n in names if n not in ref["corruptions"]]
    if lacking or not set(sevs) <= set(ref["severities"]):
        raise GraftError(f"the reference run's results lack {', '.join(lacking) or 'some'}"
                         " of the requested corruptions or severities; rerun it with the same "
                         "--corruptions and --severities")
    return ref


def _score_images(run: Any, items: list[tuple[str, float]], names: list[str], sevs: list[int],
                  seed: int, workers: int | None, progress: Any) -> tuple[dict[str, Any], Any]:
    """Corruption results on the images of ``items``, and the first image (for the figure)."""
    from ..data.images import BadImage, load_image
    from ..data.transforms import eval_view, to_model_input
    from ..evaluate.calibration import Calibration
    from ..inference import run_eval_batch
    from .bench import run_corruptions

    model, dc = run.model, run.model.data_config
    view, finish = eval_view(dc), to_model_input(dc)
    images = []
    for path, _ in items:
        try:
            images.append(view(load_image(path)))
        except BadImage as e:
            raise DataError(f"{path}: {e.reason}") from None
    targets = np.array([int(t) for _, t in items])
    cal, batch = Calibration.from_meta(run.meta), max(run_eval_batch(run.config), 16)

    @torch.no_grad()
    def predict_probs(imgs: list) -> np.ndarray:
        x = torch.stack([finish(im) for im in imgs]).contiguous(memory_format=torch.channels_last)
        return cal.probs(model(x)).numpy()

    results = run_corruptions(predict_probs, images, targets, names, sevs, seed=seed,
                              workers=workers, batch_size=batch, progress=progress)
    return results, images[0]


def _score_texts(run: Any, items: list[tuple[str, float]], names: list[str], sevs: list[int],
                 seed: int, progress: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Perturbation results on the texts of ``items``, and example perturbed texts."""
    from ..evaluate.calibration import Calibration
    from ..inference import run_eval_batch
    from .text_bench import examples, run_perturbations

    model, cal = run.model, Calibration.from_meta(run.meta)
    texts = [t for t, _ in items]
    targets = np.array([int(t) for _, t in items])

    @torch.no_grad()
    def predict_probs(batch: list[str]) -> np.ndarray:
        return cal.probs(model(model.tokenize(batch)).float()).numpy()

    results = run_perturbations(predict_probs, texts, targets, names, sevs, seed=seed,
                                batch_size=run_eval_batch(run.config), progress=progress)
    return results, examples(texts, names, sevs, seed)


def robustness(run: Any, data: str | Path | None = None, split: str | None = None,
               corruptions: str = "all", severities: str = "1-5",
               reference: str | Path | None = None, seed: int = 0, workers: int | None = None,
               limit: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Corruption benchmark of ``run`` on labeled data (default: its own test/val split); a
    text run gets the text perturbations (``corruptions`` names them; ``workers`` is unused)."""
    from ..evaluate.report import ROBUSTNESS
    from ..inference import eval_items, evaluate
    from ..train.progress import Reporter
    from . import plots
    from .bench import corruption_errors
    from .corruptions import parse_severities, resolve_corruptions
    from .perturbations import resolve_perturbations

    meta = run.meta
    modality = meta.get("modality", "image")
    if meta["task"] != "classification" or modality not in ("image", "text"):
        raise GraftError("graft robustness measures image and text classification runs")
    text = modality == "text"
    names = (resolve_perturbations if text else resolve_corruptions)(corruptions)
    sevs = parse_severities(severities)
    ref = _reference(reference, names, sevs)
    items, _, used, data = eval_items(run, data, split)
    items = _subset(items, limit, seed)
    what = "perturbations" if text else "corruptions"
    reporter = Reporter(quiet)
    reporter.line(f"[bold]robustness[/] {len(names)} {what} x severities "
                  f"{', '.join(map(str, sevs))} on {len(items)} {modality}s of {data} [{used}]")
    reporter.start(f"{'perturb' if text else 'corrupt'} + predict",
                   len(items) * (1 + len(names) * len(sevs)))
    t0 = time.perf_counter()
    try:
        if text:
            results, shown = _score_texts(run, items, names, sevs, seed, reporter.advance)
        else:
            results, shown = _score_images(run, items, names, sevs, seed, workers,
                                           reporter.advance)
    finally:
        reporter.stop()
    results.update(data=data, split=used, model=meta["model"]["name"], modality=modality,
                   kind=what, seconds=time.perf_counter() - t0, reference=None)
    if text:
        results["examples"] = shown
    if ref is not None:
        try:
            errs = corruption_errors(results, ref)
        except ValueError as e:
            raise GraftError(f"cannot compare with the reference: {e}") from None
        results["reference"] = {"run": str(reference), "clean_accuracy": ref["clean_accuracy"],
                                **errs}
    out = run.path / ROBUSTNESS
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.html")]:
        old.unlink()
    results = _finite(results)
    rd.write_json(out / RESULTS, results)
    plots.plot_accuracy_vs_severity(results, out / "accuracy_vs_severity.png")
    plots.plot_heatmap(results, out / "heatmap.png")
    if text:
        plots.plot_text_examples(shown, out / "examples.png")
        (out / "examples.html").write_text(plots.text_examples_html(shown), encoding="utf-8")
    else:
        plots.plot_examples(shown, names, sevs, out / "examples.png", seed=seed)
    # the evaluation report of the same data shows the new section
    ev = evaluate(run, None if data == run.config.data.path else data,
                  split=None if used == "all" else used, quiet=quiet)  # "all": a whole file
    results["written_to"], results["report"] = str(out / RESULTS), ev["report"]
    return results
