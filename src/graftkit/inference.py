"""Using a finished run: rebuild its model, predict, evaluate. Preprocessing comes from the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import run as rd
from .data.dataset import ImageDataset
from .data.images import BadImage, load_image
from .data.sources import discover_eval
from .data.transforms import DataConfig, eval_transform
from .errors import DataError, GraftError
from .models.vision import TimmAdapter, rebuild_model
from .train.checkpoint import load_weights
from .train.device import resolve_eval_batch


def load_model(path: Path, meta: dict[str, Any]) -> TimmAdapter:
    weights = path / rd.WEIGHTS
    if not weights.is_file():
        raise GraftError(f"run {str(path)!r} has no {rd.WEIGHTS} (did training finish an epoch?)")
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
    return resolve_eval_batch(cfg.data.eval_batch_size, torch.device("cpu"), cfg.data.batch_size)


@torch.no_grad()
def predict(model: TimmAdapter, meta: dict[str, Any], items: list[Any], topk: int = 5,
            batch_size: int = 8) -> list[dict[str, Any]]:
    tf = eval_transform(model.data_config)
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        named = [_as_image(it) for it in items[start:start + batch_size]]
        x = torch.stack([tf(img) for _, img in named])  # (B, C, H, W)
        out = model(x.contiguous(memory_format=torch.channels_last)).float()
        for (name, _), row in zip(named, out):
            results.append(_describe(name, row, meta, topk))
    return results


def _describe(name: str, row: torch.Tensor, meta: dict[str, Any], topk: int) -> dict[str, Any]:
    if meta["task"] == "regression":
        ts = meta.get("target_stats") or {}
        value = float(row[0]) * ts.get("std", 1.0) + ts.get("mean", 0.0)
        return {"input": name, "value": value}
    probs = row.softmax(-1)
    k = min(topk, len(probs))
    p, idx = probs.topk(k)
    top = [{"label": meta["classes"][int(i)], "prob": float(v)} for v, i in zip(p, idx)]
    return {"input": name, "label": top[0]["label"], "prob": top[0]["prob"], "top": top}


def _run_split(cfg: Any, meta: dict[str, Any], split: str | None
               ) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    """A split of the run's own data, re-derived exactly as training split it."""
    from .data.sources import discover

    d = cfg.data
    spec = discover(d.path, task=cfg.task, val_fraction=d.val_fraction,
                    test_fraction=d.test_fraction, seed=d.split_seed, path_column=d.path_column,
                    label_column=d.label_column)
    if spec.classes != meta["classes"]:
        raise DataError(f"the classes in {d.path!r} changed since training; pass --data")
    used = split or ("test" if "test" in spec.splits else "val")
    if used not in spec.splits:
        raise DataError(f"the run's data has no {used!r} split ({', '.join(spec.splits)})")
    return list(spec.splits[used]), spec.skipped, used


def evaluate(run: Any, data: str | Path | None, split: str | None = None,
             name: str | None = None, quiet: bool = True) -> dict[str, Any]:
    from .train.loop import LoopSettings, predict_batches, score
    from .train.losses import build_loss
    from .train.progress import Reporter

    meta, cfg = run.meta, run.config
    if data is None:
        items, skipped, used = _run_split(cfg, meta, split)
        data = cfg.data.path
    else:
        items, skipped, used = discover_eval(data, meta["classes"], task=meta["task"],
                                             split=split, path_column=cfg.data.path_column,
                                             label_column=cfg.data.label_column)
    if not items:
        raise DataError(f"no usable labeled images in {str(data)!r}")
    ts = meta.get("target_stats") or {}
    s = LoopSettings(task=meta["task"], classes=meta["classes"], topk=cfg.train.topk,
                     target_mean=ts.get("mean", 0.0), target_std=ts.get("std", 1.0),
                     channels_last=True)
    model = run.model
    ds = ImageDataset(items, eval_transform(model.data_config), meta["task"])
    loader = torch.utils.data.DataLoader(ds, batch_size=run_eval_batch(cfg))
    reporter = Reporter(quiet)
    reporter.start("evaluate", len(loader))
    try:
        outputs, targets = predict_batches(lambda x: (reporter.advance(1), model(x))[1], loader, s)
    finally:
        reporter.stop()
    loss = build_loss("mse" if meta["task"] == "regression" else "cross_entropy")
    metrics = score(outputs, targets, loss, s)
    metrics.update(data=str(data), split=used, n_skipped=len(skipped), skipped=skipped)
    out_name = rd.safe_name(name or f"{Path(data).resolve().name}-{used}")
    rd.write_json(run.path / "eval" / out_name / rd.METRICS, metrics)
    metrics["written_to"] = str(run.path / "eval" / out_name / rd.METRICS)
    return metrics
