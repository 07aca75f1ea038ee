"""The training loop, in one file, top to bottom.

    for each stage of the strategy:
        freeze all but the stage's trainable blocks; one optimizer + schedule for the stage
        head-only and no random augmentation?  -> train the head on cached backbone features
        for each epoch:
            reseed (so a resumed run replays exactly), train, validate
            hooks: history line, best checkpoint, early stop, resumable state

Determinism: every epoch reseeds torch from ``(seed, stage, epoch)`` and the DataLoader gets its
own generator from the same numbers, so a run resumed after epoch k reaches the same weights as an
uninterrupted one on CPU. Nothing here reads the config: ``LoopSettings`` (``settings.py``)
holds plain values. One batch is ``train_step`` (``step.py``), which ``graft lr-find`` runs too.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from ..errors import TrainingDiverged
from ..evaluate.metrics import classification_metrics, regression_metrics
from ..strategies import Stage
from . import features as feature_cache
from .checkpoint import load_model_state, load_state
from .hooks import Hook, LoopState
from .losses import LossFn
from .optim import build_optimizer, build_scheduler
from .progress import Reporter
from .settings import LoopData, LoopSettings
from .step import loss_target, to_device, train_step


def augment_for(stage: Stage, augment: str) -> str:
    """``auto``: no augmentation for head-only stages (so features can be cached), else light."""
    if augment != "auto":
        return augment
    return "none" if stage.head_only else "light"


def set_trainable(model: nn.Module, n_blocks: int) -> int:
    """Head + the last ``n_blocks`` backbone blocks train; the rest is frozen. Returns #params."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    blocks = model.blocks()
    names = {n for group in blocks[len(blocks) - min(n_blocks, len(blocks)):] for n in group}
    if n_blocks > 0:
        for n, p in model.named_parameters():
            if n in names:
                p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: nn.Module, n_blocks: int, freeze_bn: bool = False) -> None:
    """model.train(), except frozen parts: every module whose parameters are all frozen stays in
    eval mode (its BatchNorm keeps the pretrained statistics, its dropout and drop-path are off),
    so a "frozen" layer really computes what it did before. ``freeze_bn`` keeps every BatchNorm's
    statistics (its affine weights still train): small batches of a small dataset give noisy
    statistics that distort the features."""
    model.train()
    if n_blocks == 0:
        model.backbone.eval()
        return
    for m in model.backbone.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()
        elif freeze_bn and isinstance(m, _BatchNorm):
            m.eval()


def _seed_epoch(seed: int, stage: int, epoch: int) -> torch.Generator:
    s = (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63)
    torch.manual_seed(s)
    np.random.seed(s % (2**32))
    return torch.Generator().manual_seed(s)


def _mixer(s: LoopSettings, num_classes: int) -> Callable | None:
    """MixUp / CutMix on image batches (torchvision v2); picks one per batch when both are on."""
    if s.task != "classification":
        return None
    ops = []
    if s.mixup > 0:
        ops.append(v2.MixUp(alpha=s.mixup, num_classes=num_classes))
    if s.cutmix > 0:
        ops.append(v2.CutMix(alpha=s.cutmix, num_classes=num_classes))
    return None if not ops else ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


class Batches:
    """The inputs of one stage: images through the full model, or cached features via the head."""

    def __init__(self, model: nn.Module, stage: Stage, s: LoopSettings, data: LoopData,
                 reporter: Reporter) -> None:
        self.model, self.s = model, s
        preset = augment_for(stage, s.augment)
        self.cached = stage.head_only and preset == "none" and s.feature_cache != "off"
        if stage.head_only and preset != "none":
            reporter.warn(f"augmentation '{preset}' is random, so backbone features cannot be "
                          "cached: they are recomputed every epoch "
                          "(train.augment=none caches them)")
        if self.cached:
            self.train_set: Dataset = features_for(model, data.train, "train", data, s, reporter)
            self.val_set: Dataset = features_for(model, data.val, "val", data, s, reporter)
            self.forward: Callable[[torch.Tensor], torch.Tensor] = model.head
        else:
            self.train_set = model.make_dataset(data.train, s.task, preset)
            self.val_set = model.make_dataset(data.val, s.task)
            self.forward = model
        self.mix = _mixer(s, len(s.classes)) if (
            not self.cached and getattr(model, "mixes_inputs", False)) else None
        self.collate = None if self.cached else model.collate

    def loader(self, split: str, generator: torch.Generator | None = None) -> DataLoader:
        train = split == "train"
        workers = 0 if self.cached else self.s.num_workers
        return DataLoader(self.train_set if train else self.val_set,
                          batch_size=self.s.batch_size if train else self.s.eval_batch_size,
                          shuffle=train, generator=generator, num_workers=workers,
                          collate_fn=self.collate,
                          drop_last=train and len(self.train_set) > self.s.batch_size
                          and self.mix is not None)


def features_for(model: nn.Module, items: Sequence[tuple[str, float]], split: str,
                 data: LoopData, s: LoopSettings, reporter: Reporter, mode: str | None = None
                 ) -> TensorDataset:
    """Backbone features of a split, from the cache when the same backbone has seen the same data
    (``data.fingerprint`` covers every split's files and targets)."""
    key = feature_cache.cache_key(feature_cache.weights_digest(model.backbone), data.fingerprint,
                                  model.input_signature(),
                                  f"{split}|{s.device.type}|{s.amp_dtype}")
    was_training = model.training
    model.eval()

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        reporter.start(f"features {split}", len(items))
        try:
            with torch.autocast(s.device.type, s.amp_dtype, enabled=s.amp_dtype is not None):
                return feature_cache.extract(model.features, model.make_dataset(items, s.task),
                                             s.eval_batch_size, s.device, s.num_workers,
                                             on_batch=reporter.advance,
                                             channels_last=s.channels_last,
                                             collate=model.collate)
        finally:
            reporter.stop()

    (x, y), origin = feature_cache.cached_extract(key, mode or s.feature_cache, compute,
                                                   reporter.warn)
    model.train(was_training)
    if origin != "computed":
        reporter.line(f"  features {split}: {len(y)} from the {origin} cache")
    return TensorDataset(x.to(s.device), y)


@torch.no_grad()
def predict_batches(forward: Callable, loader: DataLoader, s: LoopSettings
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (N, K) float32 and targets (N,) over a loader, in eval mode."""
    outs, ys = [], []
    for x, y in loader:
        x = to_device(x, s)
        with torch.autocast(s.device.type, s.amp_dtype, enabled=s.amp_dtype is not None):
            outs.append(forward(x).float().cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def loss_value(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, s: LoopSettings
               ) -> float:
    """The training loss function on eval outputs (regression targets standardised first)."""
    return float(loss_fn(outputs, loss_target(targets, s)))


def score(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, s: LoopSettings
          ) -> dict[str, Any]:
    """Loss and task metrics of raw outputs; regression outputs are de-standardised first."""
    loss = loss_value(outputs, targets, loss_fn, s)
    if s.task == "regression":
        pred = outputs.squeeze(-1).numpy() * s.target_std + s.target_mean
        return {"loss": loss, **regression_metrics(pred, targets.float().numpy())}
    probs = outputs.softmax(-1).numpy()
    m = classification_metrics(probs, targets.numpy(), list(s.classes), s.topk)
    return {"loss": loss, **m}


def _stage_optimizer(model: nn.Module, stage: Stage, s: LoopSettings, steps: int
                     ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    # The optimizer holds every parameter the stage will ever train (gradual unfreezing adds
    # blocks later); frozen ones have no gradient and are skipped by torch's optimizers.
    set_trainable(model, max(stage.blocks_at(e) for e in range(stage.epochs)))
    groups = model.param_groups(stage.lr, s.weight_decay, s.layer_decay)
    opt = build_optimizer(s.optimizer, groups, stage.lr, s.momentum, s.nesterov)
    per_epoch = math.ceil(steps / s.accumulate)
    sched = build_scheduler(opt, s.schedule, per_epoch * stage.epochs,
                            int(s.warmup_epochs * per_epoch), per_epoch, s.step_size, s.gamma)
    return opt, sched


def train_epoch(model: nn.Module, batches: Batches, loader: DataLoader, state: LoopState,
                loss_fn: LossFn, s: LoopSettings, n_blocks: int, reporter: Reporter,
                scaler: torch.amp.GradScaler) -> dict[str, float]:
    opt, sched = state.optimizer, state.scheduler
    assert opt is not None and sched is not None
    train_mode(model, n_blocks, s.freeze_bn)
    total, seen, t0 = 0.0, 0, time.perf_counter()
    opt.zero_grad(set_to_none=True)
    n_steps = len(loader)
    for i, (x, y) in enumerate(loader):
        update = (i + 1) % s.accumulate == 0 or i + 1 == n_steps
        loss, n = train_step(model, batches.forward, x, y, loss_fn, s, opt, scaler, batches.mix,
                             s.accumulate, update)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at epoch {state.epoch + 2}, step {i + 1}: lower "
                "optim.lr or set train.grad_clip; the last good checkpoint is kept"
            )
        if update:
            sched.step()
            state.step += 1
        total += loss * n
        seen += n
        reporter.advance(1, f"loss {total / seen:.4f}", seen / (time.perf_counter() - t0))
    dt = time.perf_counter() - t0
    return {"train_loss": total / max(1, seen), "train_time_s": dt, "samples_per_s": seen / dt}


def fit(
    model: nn.Module,
    stages: Sequence[Stage],
    loss_fn: LossFn,
    s: LoopSettings,
    data: LoopData,
    hooks: Sequence[Hook],
    reporter: Reporter,
    resume_from: Path | None = None,
    resume_info: dict[str, Any] | None = None,
) -> LoopState:
    """Train ``model`` through ``stages``; returns the final loop state (best, stop reason)."""
    model.to(s.device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp_dtype == torch.float16)
    state = LoopState(model, scaler=scaler)
    start_stage = resume_info["stage_index"] if resume_info else 0
    for si, stage in enumerate(stages):
        if si < start_stage:
            state.epoch += stage.epochs
            continue
        state.stage_index, state.stage_epoch = si, -1
        for h in hooks:
            h.on_stage_start(state)
        resuming = resume_info is not None and si == start_stage and resume_from is not None
        if resuming:  # weights first: a cached stage extracts features with them
            load_model_state(resume_from, model)
        batches = Batches(model, stage, s, data, reporter)
        steps = len(batches.loader("train"))
        state.optimizer, state.scheduler = _stage_optimizer(model, stage, s, steps)
        if resuming:
            info = load_state(resume_from, model, state.optimizer, state.scheduler)
            for k in ("stage_epoch", "epoch", "step", "best", "best_epoch", "bad_epochs",
                      "stop", "stop_stage", "stop_reason"):
                setattr(state, k, info[k])
            if info.get("scaler"):
                scaler.load_state_dict(info["scaler"])
        reporter.line(f"[bold]stage {si + 1}/{len(stages)}: {stage.name}[/] "
                      f"({stage.epochs} epochs, lr {stage.lr:g}"
                      f"{', cached features' if batches.cached else ''})")
        for e in range(state.stage_epoch + 1, stage.epochs):
            if state.stop or state.stop_stage:
                break
            n_blocks = stage.blocks_at(e)
            trainable = set_trainable(model, n_blocks)
            gen = _seed_epoch(s.seed, si, e)
            loader = batches.loader("train", gen)
            reporter.start(f"epoch {state.epoch + 2} {stage.name}", len(loader))
            try:
                rec = train_epoch(model, batches, loader, state, loss_fn, s, n_blocks, reporter,
                                  scaler)
            finally:
                reporter.stop()
            model.eval()
            outputs, targets = predict_batches(batches.forward, batches.loader("val"), s)
            if not torch.isfinite(outputs).all():  # the last step can blow up the weights
                raise TrainingDiverged(
                    f"validation outputs became non-finite after epoch {state.epoch + 2}: lower "
                    "optim.lr or set train.grad_clip; the last good checkpoint is kept")
            val = score(outputs, targets, loss_fn, s)
            state.epoch, state.stage_epoch = state.epoch + 1, e
            record = {"epoch": state.epoch + 1, "stage": stage.name, "stage_epoch": e + 1,
                      "trainable_params": trainable,
                      "unfrozen_blocks": min(n_blocks, len(model.blocks())),
                      "lr": max(g["lr"] for g in state.optimizer.param_groups), **rec,
                      **{f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float))}}
            with _defer_sigint():  # Ctrl-C must not split the epoch's bookkeeping in two
                for h in hooks:
                    h.on_epoch_end(state, record)
            reporter.line(_epoch_line(record, s.monitor))
        if state.stop:
            break
    for h in hooks:
        h.on_train_end(state)
    return state


@contextlib.contextmanager
def _defer_sigint() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then raise it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _epoch_line(r: dict[str, Any], monitor: str) -> str:
    star = " [green]*[/]" if r.get("best") else ""
    return (f"  epoch {r['epoch']:>3} {r['stage'][:8]:<8} loss {r['train_loss']:.4f} | val loss "
            f"{r['val_loss']:.4f} {monitor[:8]} {r[f'val_{monitor}']:.4f} | "
            f"{r['samples_per_s']:.0f}/s{star}")
