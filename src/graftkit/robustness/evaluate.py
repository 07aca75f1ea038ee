"""``graft robustness``: a run's accuracy under the ImageNet-C corruptions, written to the run.

    RUN_DIR/robustness/
      results.json              accuracy per corruption x severity, mCA, relative robustness,
                                CE / mCE / relative mCE against --reference (when given)
      accuracy_vs_severity.png  heatmap.png  examples.png

Images are corrupted as the model sees them (after the evaluation resize and centre crop, as
ImageNet-C corrupts 224 px crops), then normalised. The evaluation report of the same data and
split is written again so that it shows the robustness section.
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


def robustness(run: Any, data: str | Path | None = None, split: str | None = None,
               corruptions: str = "all", severities: str = "1-5",
               reference: str | Path | None = None, seed: int = 0, workers: int | None = None,
               limit: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Corruption benchmark of ``run`` on labeled data (default: its own test/val split)."""
    from ..data.images import BadImage, load_image
    from ..data.transforms import eval_view, to_model_input
    from ..evaluate.calibration import Calibration
    from ..evaluate.report import ROBUSTNESS, robustness_results
    from ..inference import eval_items, evaluate, run_eval_batch
    from ..train.progress import Reporter
    from . import plots
    from .bench import corruption_errors, run_corruptions
    from .corruptions import parse_severities, resolve_corruptions

    meta = run.meta
    if meta["task"] != "classification" or meta.get("modality", "image") != "image":
        raise GraftError("graft robustness measures image classification runs")
    names, sevs = resolve_corruptions(corruptions), parse_severities(severities)
    ref = None
    if reference is not None:
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
    items, _, used, data = eval_items(run, data, split)
    items = _subset(items, limit, seed)
    model, dc = run.model, run.model.data_config
    view, finish = eval_view(dc), to_model_input(dc)
    images = []
    for path, _ in items:
        try:
            images.append(view(load_image(path)))
        except BadImage as e:
            raise DataError(f"{path}: {e.reason}") from None
    targets = np.array([int(t) for _, t in items])
    cal, batch = Calibration.from_meta(meta), max(run_eval_batch(run.config), 16)

    @torch.no_grad()
    def predict_probs(imgs: list) -> np.ndarray:
        x = torch.stack([finish(im) for im in imgs]).contiguous(memory_format=torch.channels_last)
        return cal.probs(model(x)).numpy()

    reporter = Reporter(quiet)
    reporter.line(f"[bold]robustness[/] {len(names)} corruptions x severities "
                  f"{', '.join(map(str, sevs))} on {len(items)} images of {data} [{used}]")
    reporter.start("corrupt + predict", len(items) * (1 + len(names) * len(sevs)))
    t0 = time.perf_counter()
    try:
        results = run_corruptions(predict_probs, images, targets, names, sevs, seed=seed,
                                  workers=workers, batch_size=batch, progress=reporter.advance)
    finally:
        reporter.stop()
    results.update(data=data, split=used, model=meta["model"]["name"],
                   seconds=time.perf_counter() - t0, reference=None)
    if ref is not None:
        try:
            errs = corruption_errors(results, ref)
        except ValueError as e:
            raise GraftError(f"cannot compare with the reference: {e}") from None
        results["reference"] = {"run": str(reference), "clean_accuracy": ref["clean_accuracy"],
                                **errs}
    out = run.path / ROBUSTNESS
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    results = _finite(results)
    rd.write_json(out / RESULTS, results)
    plots.plot_accuracy_vs_severity(results, out / "accuracy_vs_severity.png")
    plots.plot_heatmap(results, out / "heatmap.png")
    plots.plot_examples(images[0], names, sevs, out / "examples.png", seed=seed)
    # the evaluation report of the same data shows the new section
    ev = evaluate(run, None if data == run.config.data.path else data, split=used, quiet=quiet)
    results["written_to"], results["report"] = str(out / RESULTS), ev["report"]
    return results
