"""Using a finished run: rebuild its model, predict, evaluate. Preprocessing comes from the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import run as rd
from .data.images import BadImage, load_image
from .data.sources import discover_eval
from .data.transforms import DataConfig, eval_transform
from .errors import DataError, GraftError
from .evaluate.calibration import Calibration
from .models.vision import rebuild_model
from .train.checkpoint import load_weights
from .train.device import resolve_eval_batch


def load_model(path: Path, meta: dict[str, Any]) -> Any:
    weights = path / rd.WEIGHTS
    if not weights.is_file():
        raise GraftError(f"run {str(path)!r} has no {rd.WEIGHTS} (did training finish an epoch?)")
    if meta.get("modality") == "text":
        from .models.text import TextDataConfig, rebuild_text_model

        text = rebuild_text_model(meta["model"], meta["num_outputs"], meta["model"]["dropout"],
                                  TextDataConfig.from_dict(meta["preprocessing"]), path)
        load_weights(text, weights)
        return text.eval()
    dc = DataConfig.from_dict(meta["preprocessing"])
    model = rebuild_model(meta["model"]["arch"], meta["num_outputs"], meta["model"]["dropout"], dc)
    load_weights(model, weights)
    # NHWC is what oneDNN/cuDNN convolutions run fastest (see train.device.resolve_channels_last).
    return model.eval().to(memory_format=torch.channels_last)


def _as_image(item: Any) -> tuple[str, Image.Image]:
    if isinstance(item, Image.Image):
        return "<image>", item.convert("RGB")
    try:
        return str(item), load_image(item)
    except BadImage as e:
        raise DataError(f"{item}: {e.reason}") from None


def run_eval_batch(cfg: Any) -> int:
    """A run's batch size for gradient-free passes; its model is used on the CPU."""
    if cfg.data.modality == "text":
        return cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    return resolve_eval_batch(cfg.data.eval_batch_size, torch.device("cpu"), cfg.data.batch_size)


@torch.no_grad()
def predict(model: Any, meta: dict[str, Any], items: list[Any], topk: int = 5,
            batch_size: int = 8) -> list[dict[str, Any]]:
    cal = Calibration.from_meta(meta)
    results: list[dict[str, Any]] = []
    if meta.get("modality") == "text":
        texts = [str(t) for t in items]
        if not all(t.strip() for t in texts):
            raise DataError("empty text: every input needs some words")
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            out = model(model.tokenize(chunk)).float()
            results += [_describe(t, row, meta, topk, cal) for t, row in zip(chunk, out)]
        return results
    tf = eval_transform(model.data_config)
    for start in range(0, len(items), batch_size):
        named = [_as_image(it) for it in items[start:start + batch_size]]
        x = torch.stack([tf(img) for _, img in named])  # (B, C, H, W)
        out = model(x.contiguous(memory_format=torch.channels_last)).float()
        for (name, _), row in zip(named, out):
            results.append(_describe(name, row, meta, topk, cal))
    return results


def _describe(name: str, row: torch.Tensor, meta: dict[str, Any], topk: int,
              cal: Calibration) -> dict[str, Any]:
    if meta["task"] == "regression":
        ts = meta.get("target_stats") or {}
        value = float(row[0]) * ts.get("std", 1.0) + ts.get("mean", 0.0)
        return {"input": name, "value": value}
    probs = cal.probs(row[None])[0]
    label = meta["classes"][int(cal.decide(probs[None].numpy())[0])]
    k = min(topk, len(probs))
    p, idx = probs.topk(k)
    top = [{"label": meta["classes"][int(i)], "prob": float(v)} for v, i in zip(p, idx)]
    return {"input": name, "label": label, "prob": float(probs[meta["classes"].index(label)]),
            "top": top}


def _run_split(cfg: Any, meta: dict[str, Any], split: str | None
               ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    """A split of the run's own data, re-derived exactly as training split it."""
    from .data.sources import discover
    from .data.text_sources import discover_text

    d = cfg.data
    if meta.get("modality") == "text":
        spec = discover_text(d.path, val=d.val, test=d.test, task=cfg.task,
                             text_column=d.text_column, label_column=d.label_column,
                             val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                             seed=d.split_seed)
    else:
        spec = discover(d.path, task=cfg.task, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, seed=d.split_seed,
                        path_column=d.path_column, label_column=d.label_column)
    if spec.classes != meta["classes"]:
        raise DataError(f"the classes in {d.path!r} changed since training; pass --data")
    used = split or ("test" if "test" in spec.splits else "val")
    if used not in spec.splits:
        raise DataError(f"the run's data has no {used!r} split ({', '.join(spec.splits)})")
    return list(spec.splits[used]), spec.skipped, used


def _outputs(run: Any, items: list[tuple[str, float]], quiet: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's raw outputs (logits) and targets on labeled items."""
    from .train.loop import LoopSettings, predict_batches
    from .train.progress import Reporter

    s = LoopSettings(task=run.meta["task"], classes=run.meta["classes"], channels_last=True)
    model = run.model
    ds = model.make_dataset(items, run.meta["task"])
    loader = torch.utils.data.DataLoader(ds, batch_size=run_eval_batch(run.config),
                                         collate_fn=model.collate)
    reporter = Reporter(quiet)
    reporter.start("predict", len(loader))
    try:
        return predict_batches(lambda x: (reporter.advance(1), model(x))[1], loader, s)
    finally:
        reporter.stop()


def calibrate(run: Any, temperature: bool = True, threshold: str = "keep",
              target: float | None = None) -> dict[str, Any]:
    """Refit temperature (and a binary decision threshold) on the run's validation split and
    store it in meta.json; returns the calibration with val ECE/log loss before and after."""
    from .evaluate.calibration import fit_calibration
    from .evaluate.metrics import probability_scores

    meta = run.meta
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
    items, _, _ = _run_split(run.config, meta, "val")
    logits, targets = _outputs(run, items)
    cal, warning = fit_calibration(logits, targets, meta["classes"], temperature, threshold,
                                   target)
    y = targets.numpy()
    before = probability_scores(old.probs(logits).double().numpy(), y, len(meta["classes"]))
    after = probability_scores(cal.probs(logits).double().numpy(), y, len(meta["classes"]))
    meta = rd.read_json(run.path / rd.META)
    meta["calibration"] = {**cal.to_dict(), "fitted_on": "val"}
    rd.write_json(run.path / rd.META, meta)
    run.meta = meta
    return {**cal.to_dict(), "before": before, "after": after, "warning": warning}


def _eval_texts(data: str | Path, meta: dict[str, Any], cfg: Any, split: str | None
                ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    """A labeled text CSV, with the run's label map (a split column is honoured with --split)."""
    from .data.sources import SPLIT_ALIASES, _is_float
    from .data.text import read_text_csv

    d = cfg.data
    rows, skipped = read_text_csv(data, d.text_column, d.label_column)
    if split:
        try:
            splits = [s for _, s in read_text_csv(data, d.text_column, "split")[0]]
        except DataError:
            raise DataError(f"CSV {str(data)!r} has no split column; drop --split") from None
        rows = [r for r, s in zip(rows, splits) if SPLIT_ALIASES.get(s.lower()) == split]
    index = {c: i for i, c in enumerate(meta["classes"])}
    items = []
    for text, label in rows:
        if meta["task"] == "regression":
            if not _is_float(label):
                raise DataError(f"{data}: target {label!r} is not a number")
            items.append((text, float(label)))
        elif label not in index:
            raise DataError(f"{data}: label {label!r} is not a class of this run "
                            f"({', '.join(meta['classes'])})")
        else:
            items.append((text, float(index[label])))
    return items, skipped, split or "all"


def eval_items(run: Any, data: str | Path | None, split: str | None = None
               ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str, str]:
    """Labeled items to evaluate a run on: ``data`` (a folder or CSV, or a split of it), or by
    default the run's own test split (else val). Returns (items, skipped, split, data)."""
    meta, cfg = run.meta, run.config
    if data is None:
        items, skipped, used = _run_split(cfg, meta, split)
        data = cfg.data.path
    elif meta.get("modality") == "text":
        items, skipped, used = _eval_texts(data, meta, cfg, split)
    else:
        items, skipped, used = discover_eval(data, meta["classes"], task=meta["task"],
                                             split=split, path_column=cfg.data.path_column,
                                             label_column=cfg.data.label_column)
    if not items:
        raise DataError(f"no usable labeled examples in {str(data)!r}")
    return items, skipped, used, str(data)


def evaluate(run: Any, data: str | Path | None, split: str | None = None,
             name: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """Metrics, plots and report.html of a run on labeled data, in ``RUN_DIR/eval/<name>/``."""
    from .evaluate.analysis import analyze
    from .evaluate.report import REPORT, write_eval

    meta, cfg = run.meta, run.config
    items, skipped, used, data = eval_items(run, data, split)
    outputs, targets = _outputs(run, items, quiet)
    a = analyze(outputs, targets, meta["task"], meta["classes"], Calibration.from_meta(meta),
                cfg.train.topk, meta.get("target_stats"), items=[str(p) for p, _ in items])
    out = rd.eval_dir(run.path, data, used, name)
    info = {"data": str(data), "split": used, "n_skipped": len(skipped), "skipped": skipped}
    metrics = write_eval(out, a, run.path, meta, info, top_losses=cfg.report.top_losses)
    metrics.update(written_to=str(out / rd.METRICS), report=str(out / REPORT))
    return metrics
