"""``graft robustness``: a run's accuracy under the ImageNet-C corruptions (image runs) or the
text perturbations (text runs), written to the run.

    RUN_DIR/robustness/
      results.json              accuracy per corruption x severity, mCA, relative robustness,
                                CE / mCE / relative mCE against --reference (when given)
      accuracy_vs_severity.png  heatmap.png
      examples.png              images: one image at every corruption and severity
                                texts: a table of one text at every perturbation and severity
      examples.html             texts: the same table, as a page (also in results.json)

The run's modality supplies the perturbation family and scores it (images are corrupted as the
model sees them, texts as read, before tokenization: see ``Modality.robustness``). The evaluation
report of the same data and split is written again so that it shows the robustness section.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from .. import run as rd
from ..errors import GraftError, check_whole
from ..inference import LoadedRun, eval_items, evaluate

RESULTS = rd.ROBUSTNESS_RESULTS


def subset_items(items: list[tuple[str, float]], limit: int | None, seed: int
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


def _same_examples(ref: dict[str, Any], data: str, split: str, n: int, seed: int) -> None:
    """Corruption errors relative to a reference compare like with like only when both runs
    scored the same examples with the same corrupting draws."""
    def where(d: Any) -> str:
        return str(Path(str(d)).expanduser().resolve())

    ours = {"data": where(data), "split": split, "n": n, "seed": seed}
    theirs = {k: where(ref[k]) if k == "data" else ref[k] for k in ours if k in ref}
    differs = [f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in theirs
               if theirs[k] != ours[k]]
    if differs:
        raise GraftError("the reference run's robustness was measured on other examples ("
                         + "; ".join(differs) + "): its errors would not compare; rerun it with "
                         "the same data, --split, --limit and --seed")


def _score(run: LoadedRun, items: list[tuple[str, float]], names: list[str], sevs: list[int],
           seed: int, workers: int | None, progress: Any, warn: Any = None,
           engine: str = "torch") -> tuple[dict[str, Any], Any]:
    """The modality's perturbation benchmark; the backbone runs on ONNX Runtime unless
    ``engine`` is torch or it is not installed (onnx then is a one-line error); results.json's
    ``engine`` says what ran."""
    from ..train import engines

    engines.check(engine)
    engines.reset()
    forward = None
    if engine != "torch" and engines.available():
        forward = engines.FrozenModel(run.model, warn or (lambda _m: None))
    results, shown = run.modality.robustness(run.model, run.calibration, items, names, sevs,
                                             seed, run.eval_batch, workers, progress,
                                             forward=forward)
    if not engines.used().get("engine"):  # the model ran on torch, as it is
        engines.note_torch()
    results["engine"] = engines.used()["engine"]
    return results, shown


def quick_mca(run: LoadedRun, corruptions: str | None, severities: str, limit: int | None,
              seed: int = 0) -> dict[str, Any]:
    """mCA of a finished run on its validation split over ``corruptions`` (default: the
    modality's small robust subset); nothing is written to the run (``graft search --objective
    robust``)."""
    from .corruptions import parse_severities

    names = run.modality.robustness_names(corruptions or run.modality.robust_subset())
    sevs = parse_severities(severities)
    items, _, _, _ = eval_items(run, None, "val")
    items = subset_items(items, limit, seed)
    results, _ = _score(run, items, names, sevs, seed, 0, lambda *a, **k: None)
    return {"mca": float(results["mca"]), "clean_accuracy": float(results["clean_accuracy"]),
            "corruptions": names, "severities": sevs, "n": len(items)}


def robustness(run: LoadedRun, data: str | Path | None = None, split: str | None = None,
               corruptions: str = "all", severities: str = "1-5",
               reference: str | Path | None = None, seed: int = 0, workers: int | None = None,
               limit: int | None = None, quiet: bool = True, engine: str | None = None
               ) -> dict[str, Any]:
    """Corruption benchmark of ``run`` on labeled data (default: its own test/val split); a
    text run gets the text perturbations (``corruptions`` names them; ``workers`` is unused).
    ``engine`` (auto | onnx | torch; default the run's ``train.feature_engine``): what runs the
    image model's backbone."""
    from ..train.progress import Reporter
    from . import plots
    from .bench import corruption_errors
    from .corruptions import parse_severities

    meta, modality = run.meta, run.modality
    check_whole("workers", workers, least=0)
    check_whole("limit", limit)
    if engine is not None and engine not in ("auto", "onnx", "torch"):
        raise GraftError(f"engine={engine!r}: use auto, onnx or torch")
    multilabel = meta["task"] == "multilabel"
    if meta["task"] != "classification" and not (multilabel and modality.robust_labels):
        raise GraftError(f"graft robustness measures classification runs (and multi-label "
                         f"image runs); this one is a {meta['task']} {modality.noun} run")
    names = modality.robustness_names(corruptions)
    sevs = parse_severities(severities)
    ref = _reference(reference, names, sevs)
    items, _, used, data = eval_items(run, data, split)
    items = subset_items(items, limit, seed)
    if ref is not None:
        _same_examples(ref, data, used, len(items), seed)
    what = modality.robustness_kind
    reporter = Reporter(quiet)
    reporter.line(f"[bold]robustness[/] {len(names)} {what} x severities "
                  f"{', '.join(map(str, sevs))} on {len(items)} {modality.noun}s of {data} "
                  f"[{used}]")
    reporter.start("perturb + predict", len(items) * (1 + len(names) * len(sevs)))
    t0 = time.perf_counter()
    try:
        results, shown = _score(run, items, names, sevs, seed, workers, reporter.advance,
                                reporter.warn, engine or run.config.train.feature_engine)
    finally:
        reporter.stop()
    results.update(data=data, split=used, model=meta["model"]["name"], modality=modality.name,
                   kind=what, seconds=time.perf_counter() - t0, reference=None,
                   accuracy="subset accuracy (every label right)" if multilabel else "accuracy")
    if ref is not None:
        try:
            errs = corruption_errors(results, ref)
        except ValueError as e:
            raise GraftError(f"cannot compare with the reference: {e}") from None
        results["reference"] = {"run": str(reference), "clean_accuracy": ref["clean_accuracy"],
                                **errs}
    out = run.path / rd.ROBUSTNESS
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *out.glob("*.html")]:
        old.unlink()
    results.update(modality.robustness_figures(shown, names, sevs, out, seed))
    results = rd.finite(results)
    rd.write_json(out / RESULTS, results)
    plots.plot_accuracy_vs_severity(results, out / "accuracy_vs_severity.png")
    plots.plot_heatmap(results, out / "heatmap.png")
    # the evaluation report of the same data shows the new section
    ev = evaluate(run, None if data == run.config.data.path else data,
                  split=None if used == "all" else used, quiet=quiet)  # "all": a whole file
    results["written_to"], results["report"] = str(out / RESULTS), ev["report"]
    return results
