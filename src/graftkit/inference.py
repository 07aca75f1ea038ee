"""Using a finished run: :class:`LoadedRun` (a run directory and its model, loaded lazily), and
predict, evaluate, calibrate on it. Preprocessing comes from the run; what differs between
images and texts comes from the run's modality.

``LoadedRun`` is the run handle every consumer takes (explain, robustness, export, serve,
search); the public :class:`graftkit.Run` is a thin facade over it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import modalities
from . import run as rd
from .config import Config, build_config
from .data.tta import Averaged
from .errors import DataError, GraftError
from .evaluate.calibration import Calibration
from .evaluate.multilabel import describe_labels
from .modalities import Modality
from .models.base import restore_head
from .threads import use_threads
from .train.checkpoint import load_weights


class LoadedRun:
    """A finished (or stopped) run directory; its model is built and loaded on first use."""

    def __init__(self, path: str | Path, model: Any = None) -> None:
        if not isinstance(path, (str, Path)):
            raise GraftError(f"a run directory's path (str or Path), not {type(path).__name__}")
        self.path = rd.check_run_dir(path)
        self.meta: dict[str, Any] = rd.read_json(self.path / rd.META)
        missing = [k for k in ("task", "model", "num_outputs") if k not in self.meta] if \
            isinstance(self.meta, dict) else ["(not an object)"]
        if missing:
            raise GraftError(f"{self.path / rd.META} is damaged (no {', '.join(missing)}); "
                             "restore it from a copy or train the run again")
        self._model: Any = model  # a caller that holds the model in memory passes it

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, model={self.meta['model']['name']!r}" \
               f", strategy={self.meta['strategy']!r}, status={self.meta.get('status')!r})"

    @property
    def config(self) -> Config:
        return build_config(self.path / rd.CONFIG)

    @property
    def metrics(self) -> dict[str, Any]:
        f = self.path / rd.METRICS
        return rd.read_json(f) if f.is_file() else {}

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @cached_property
    def modality(self) -> Modality:
        return modalities.of(self.meta)

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_meta(self.meta)

    @property
    def eval_batch(self) -> int:
        """The run's batch size for gradient-free passes; its model is used on the CPU."""
        return self.modality.eval_batch(self.config.data, torch.device("cpu"))

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model(self.path, self.meta)
        return self._model


def load_model(path: Path, meta: dict[str, Any]) -> Any:
    weights = path / rd.WEIGHTS
    if not weights.is_file():
        raise GraftError(f"run {str(path)!r} has no {rd.WEIGHTS} (did training finish an epoch?)")
    classes = meta.get("classes") or []
    if meta.get("task") != "regression" and len(classes) != meta.get("num_outputs"):
        raise GraftError(f"{path / rd.META} lists {len(classes)} classes for a model of "
                         f"{meta.get('num_outputs')} outputs: was it edited, or copied from "
                         "another run?")
    use_threads()  # graft --threads / $GRAFT_THREADS / the cores this process may use
    model = restore_head(modalities.of(meta).rebuild(path, meta), meta["model"])
    load_weights(model, weights)
    # NHWC is what oneDNN/cuDNN convolutions run fastest (see train.device.resolve_channels_last);
    # a no-op for a model without 4-d weights.
    return model.eval().to(memory_format=torch.channels_last)


def tta_model(run: LoadedRun, tta: int | None) -> Averaged:
    """The run's model averaged over ``tta`` test-time views (None: the run's ``report.tta``;
    1: the model itself)."""
    n = run.config.report.tta if tta is None else tta
    return Averaged(run.model, run.modality.tta_views(n, run.model, run.config))


def tta_calibration(run: LoadedRun, views: int) -> Calibration:
    """The calibration of the model averaged over ``views``: the one fitted on its own
    validation outputs at the end of training (``report.tta`` = ``views``), else the run's."""
    fitted = run.meta.get("calibration_tta") or {}
    if views > 1 and fitted.get("views") == views:
        return Calibration.from_meta({"calibration": fitted})
    return run.calibration


@torch.no_grad()
def predict(run: LoadedRun, items: list[Any], topk: int = 5, batch_size: int | None = None,
            tta: int | None = None) -> list[dict[str, Any]]:
    """Top-k classes with calibrated probabilities (or the value) of each input; ``tta``: test-
    time views averaged (default: the run's ``report.tta``)."""
    mod, model = run.modality, tta_model(run, tta)
    cal = tta_calibration(run, len(model.views))
    view, batch_size = mod.model_view(run.model), batch_size or run.eval_batch
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        named = [mod.load(it) for it in items[start:start + batch_size]]
        out = model(mod.batch(run.model, [view(x) for _, x in named])).float()  # (B, K)
        results += [describe(name, row, run.meta, topk, cal) for (name, _), row in zip(named, out)]
    return results


def describe(name: str, row: torch.Tensor, meta: dict[str, Any], topk: int,
             cal: Calibration) -> dict[str, Any]:
    """One input's prediction from its raw output row, as ``graft predict`` reports it."""
    if meta["task"] == "regression":
        ts = meta.get("target_stats") or {}
        value = float(row[0]) * ts.get("std", 1.0) + ts.get("mean", 0.0)
        return {"input": name, "value": value}
    probs = cal.probs(row[None])[0]
    if meta["task"] == "multilabel":
        return describe_labels(name, probs.double().numpy(), meta["classes"], cal.thresholds,
                               topk)
    label = meta["classes"][int(cal.decide(probs[None].numpy())[0])]
    k = min(topk, len(probs))
    p, idx = probs.topk(k)
    top = [{"label": meta["classes"][int(i)], "prob": float(v)} for v, i in zip(p, idx)]
    return {"input": name, "label": label, "prob": float(probs[meta["classes"].index(label)]),
            "top": top}


def run_split(run: LoadedRun, split: str | None
              ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    """A split of the run's own data, re-derived exactly as training split it (default: test,
    else val). Returns (items, skipped, split used)."""
    cfg, meta = run.config, run.meta
    spec = run.modality.discover(cfg.data, cfg.task)
    if spec.classes != meta["classes"]:
        raise DataError(f"the classes in {cfg.data.path!r} changed since training; pass --data")
    used = split or ("test" if "test" in spec.splits else "val")
    if used not in spec.splits:
        raise DataError(f"the run's data has no {used!r} split ({', '.join(spec.splits)})")
    return list(spec.splits[used]), spec.skipped, used


def outputs(run: LoadedRun, items: list[tuple[str, float]], quiet: bool = True,
            tta: Averaged | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's raw outputs (logits) and targets on labeled items; with ``tta``, its outputs
    averaged over the views (``tta.plain`` keeps the plain model's)."""
    from .train.loop import LoopSettings, predict_batches
    from .train.progress import Reporter

    s = LoopSettings(task=run.meta["task"], classes=run.meta["classes"], channels_last=True)
    model = run.model
    forward = tta or model
    loader = torch.utils.data.DataLoader(model.make_dataset(items, run.meta["task"]),
                                         batch_size=run.eval_batch, collate_fn=model.collate)
    reporter = Reporter(quiet)
    reporter.start("predict" if tta is None or len(tta.views) == 1 else
                   f"predict ({len(tta.views)} test-time views)", len(loader))
    try:
        return predict_batches(lambda x: (reporter.advance(1), forward(x))[1], loader, s)
    finally:
        reporter.stop()


THRESHOLDS = ("f1", "precision", "recall", "none", "keep")  # what calibrate may refit
THRESHOLD_CHOICES = f"{', '.join(THRESHOLDS[:-1])} or {THRESHOLDS[-1]}"


def calibrate(run: LoadedRun, temperature: bool = True, threshold: str = "keep",
              target: float | None = None) -> dict[str, Any]:
    """Refit temperature (and a binary decision threshold) on the run's validation split and
    store it in meta.json; returns the calibration with val ECE/log loss before and after."""
    from .evaluate.calibration import fit_calibration
    from .evaluate.metrics import probability_scores

    meta = run.meta
    if threshold not in THRESHOLDS:
        raise GraftError(f"threshold={threshold!r}: use {THRESHOLD_CHOICES}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise GraftError(f"target={target!r}: a number between 0 and 1, e.g. 0.95")
    if target is not None and not 0.0 < target < 1.0:  # as calibration.target in a config
        raise GraftError(f"--target {target:g}: a precision or recall between 0 and 1 "
                         "(exclusive), e.g. 0.95")
    if meta["task"] == "multilabel":
        return _calibrate_multilabel(run, temperature, threshold)
    if meta["task"] != "classification":
        raise GraftError("calibration is for classification runs")
    old = Calibration.from_meta(meta)
    if threshold == "keep":
        threshold, target = old.criterion or "none", target or old.target
    if threshold != "none" and len(meta["classes"]) != 2:
        raise GraftError(f"--threshold is for binary runs; this one has {len(meta['classes'])} "
                         "classes")
    if threshold in ("precision", "recall") and target is None:
        raise GraftError(f"--threshold {threshold} needs --target, e.g. 0.95")
    items, _, _ = run_split(run, "val")
    logits, targets = outputs(run, items)
    cal, warning = fit_calibration(logits, targets, meta["classes"], temperature, threshold,
                                   target)
    y = targets.numpy()
    before = probability_scores(old.probs(logits).double().numpy(), y, len(meta["classes"]))
    after = probability_scores(cal.probs(logits).double().numpy(), y, len(meta["classes"]))
    meta = rd.read_json(run.path / rd.META)
    meta["calibration"] = {**cal.to_dict(), "fitted_on": "val"}
    fitted = meta.get("calibration_tta")
    if fitted:  # predict and evaluate use it for that many views (report.tta): refit it too
        n = fitted["views"]
        averaged, _ = outputs(run, items, tta=tta_model(run, n))
        cal_tta, _ = fit_calibration(averaged, targets, meta["classes"], temperature, threshold,
                                     target)
        meta["calibration_tta"] = {**cal_tta.to_dict(), "views": n, "fitted_on": "val"}
    rd.write_json(run.path / rd.META, meta)
    run.meta = meta
    return {**cal.to_dict(), "before": before, "after": after, "warning": warning}


def eval_items(run: LoadedRun, data: str | Path | None, split: str | None = None
               ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str, str]:
    """Labeled items to evaluate a run on: ``data`` (a folder or CSV, or a split of it), or by
    default the run's own test split (else val). Returns (items, skipped, split, data)."""
    if data is None:
        items, skipped, used = run_split(run, split)
        data = run.config.data.path
    else:
        items, skipped, used = run.modality.eval_items(data, run.meta, run.config.data, split)
    if not items:
        raise DataError(f"no usable labeled examples in {str(data)!r}")
    return items, skipped, used, str(data)


def evaluate(run: LoadedRun, data: str | Path | None, split: str | None = None,
             name: str | None = None, quiet: bool = True, tta: int | None = None
             ) -> dict[str, Any]:
    """Metrics, plots and report.html of a run on labeled data, in ``RUN_DIR/eval/<name>/``;
    with ``tta`` views (default: the run's ``report.tta``) the metrics are those of the
    averaged model, and ``tta`` in metrics.json compares them with the plain model's."""
    from .evaluate.analysis import analyze, compare_tta
    from .evaluate.report import write_eval

    meta, cfg = run.meta, run.config
    averaged = tta_model(run, tta)
    items, skipped, used, data = eval_items(run, data, split)
    logits, targets = outputs(run, items, quiet, tta=averaged)
    cal = tta_calibration(run, len(averaged.views))
    a = analyze(logits, targets, meta["task"], meta["classes"], cal, cfg.train.topk,
                meta.get("target_stats"), items=[str(p) for p, _ in items])
    out = rd.eval_dir(run.path, data, used, name)
    info: dict[str, Any] = {"data": str(data), "split": used, "n_skipped": len(skipped),
                            "skipped": skipped}
    if len(averaged.views) > 1:
        plain = analyze(torch.cat(averaged.plain).cpu(), targets, meta["task"], meta["classes"],
                        run.calibration, cfg.train.topk, meta.get("target_stats"))
        info["tta"] = compare_tta(plain, a, [n for n, _ in averaged.views], averaged.seconds,
                                  run.calibration.temperature, cal.temperature)
    metrics = write_eval(out, a, run.path, meta, info, top_losses=cfg.report.top_losses,
                         gallery=gallery_for(run))
    metrics.update(written_to=str(out / rd.METRICS), report=str(out / rd.REPORT))
    return metrics


def gallery_for(run: LoadedRun) -> Any:
    """The report's gallery maker: the run's modality shows each example with its model."""
    def show(examples: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
        model = run.model if (run.path / rd.WEIGHTS).is_file() else None
        return run.modality.gallery(examples, model, run.classes, run.calibration, out)
    return show


def ensure_reference(run: LoadedRun, write: bool = True) -> dict[str, Any]:
    """The run's drift reference: read from the run directory, or computed from its validation
    split (a run made before references were written) and, if ``write``, stored there; a run
    folder that cannot be written to just does not keep it. Raises :class:`GraftError` when the
    validation data is not available."""
    from .evaluate.analysis import analyze
    from .evaluate.reference import from_analysis, read_reference, write_reference

    ref = read_reference(run.path)
    if ref is not None:
        return ref
    meta = run.meta
    items, _, used = run_split(run, "val")
    logits, targets = outputs(run, items)
    a = analyze(logits, targets, meta["task"], meta["classes"], run.calibration,
                items=[str(p) for p, _ in items])
    ref = from_analysis(a, run.modality, used)
    if write:
        try:
            write_reference(run.path, ref)
        except OSError:
            pass  # a read-only run: serve with the reference in memory
    return ref


def _calibrate_multilabel(run: LoadedRun, temperature: bool, threshold: str) -> dict[str, Any]:
    """Refit a multi-label run's temperature and per-label thresholds on its validation split;
    before/after: macro-F1 and the mean per-label ECE there."""
    from .evaluate.calibration import fit_multilabel_calibration
    from .evaluate.multilabel import multilabel_ece, multilabel_metrics

    if threshold not in ("keep", "f1"):
        raise GraftError("a multi-label run tunes one threshold per label for F1; --threshold "
                         f"{threshold} is for binary runs")
    old = Calibration.from_meta(run.meta)
    logits, targets = outputs(run, run_split(run, "val")[0])
    cal, warning = fit_multilabel_calibration(logits, targets, temperature)
    y = targets.numpy()

    def scores(c: Calibration) -> dict[str, Any]:
        p = c.probs(logits).double().numpy()
        cut = None if c.thresholds is None else np.asarray(c.thresholds)
        return {"macro_f1": multilabel_metrics(p, y, cut)["macro_f1"],
                "ece": multilabel_ece(p, y)}

    meta = rd.read_json(run.path / rd.META)
    meta["calibration"] = {**cal.to_dict(), "fitted_on": "val"}
    rd.write_json(run.path / rd.META, meta)
    before = scores(old)
    run.meta = meta
    return {**cal.to_dict(), "before": before, "after": scores(cal), "warning": warning}
