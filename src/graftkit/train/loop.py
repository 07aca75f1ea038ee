"""The training loop, in one file, top to bottom.

    for each stage of the strategy:
        self-training round?  -> pseudo-label the unlabeled pool with the model so far
        freeze all but the stage's trainable blocks; one optimizer + schedule for the stage
        head-only and no random augmentation?  -> train the head on cached backbone features
        for each epoch:
            reseed (so a resumed run replays exactly), train (or solve the head in closed
            form; FixMatch: every step also learns from the pool), validate
            hooks: history line, best checkpoint, early stop, resumable state

Determinism: every epoch reseeds torch from ``(seed, stage, epoch)`` and the DataLoader gets its
own generator from the same numbers, so a run resumed after epoch k reaches the same weights as an
uninterrupted one on CPU. Nothing here reads the config: ``LoopSettings`` (``settings.py``)
holds plain values. One batch is ``train_step`` (``step.py``), which ``graft lr-find`` runs too.

Several processes (torchrun; ``s.world``, see ``distributed.py``): a stage that trains the backbone
runs the model in DDP on each rank's slice of the same global batches; feature extraction and
validation are sharded and gathered; head-only stages on cached features run on every rank
alike; the hooks (which write) run on rank 0 and its decisions are shared.
"""

from __future__ import annotations

import contextlib
import functools
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
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from ..errors import TrainingDiverged
from ..evaluate.metrics import classification_metrics, regression_metrics
from ..evaluate.multilabel import multilabel_metrics
from ..strategies import Stage
from . import distributed, engines
from . import features as feature_cache
from .checkpoint import load_model_state, load_state
from .ema import Ema
from .hooks import Hook, LoopState
from .losses import LossFn
from .optim import build_optimizer, build_scheduler
from .progress import Reporter
from .semi import RoundStore, TwoViewCollate, TwoViews, choose
from .settings import LoopData, LoopSettings
from .step import fixmatch_step, loss_target, to_device, train_step


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


def _seed_epoch(seed: int, stage: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed this epoch's random draws; the returned generator orders the batches. ``rank`` (a
    process's slice of sharded batches) offsets the augmentation and dropout draws, never the
    order: every rank must cut the same batches, and each must draw its own randomness."""
    s = (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63)
    _seed_draws(s, rank)
    return torch.Generator().manual_seed(s)


def _seed_draws(s: int, rank: int) -> None:
    """torch's and numpy's random draws from ``s``, offset by ``rank``."""
    own = (s + rank * 7_919) % (2**63)
    torch.manual_seed(own)
    np.random.seed(own % (2**32))


def _rank_worker_seed(rank: int, worker_id: int) -> None:
    """A DataLoader worker of a sharded stage: its seed (from the shared batch generator) offset
    by the rank, so ranks augment differently."""
    _seed_draws(torch.initial_seed(), rank)


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


Pseudo = tuple[torch.Tensor, torch.Tensor]  # indices into the unlabeled pool, their labels


class Batches:
    """The inputs of one stage: images through the full model, or cached features via the head;
    plus, in a self-training round, the pool's pseudo-labeled inputs, and for FixMatch the pool
    in two views."""

    def __init__(self, model: nn.Module, stage: Stage, s: LoopSettings, data: LoopData,
                 reporter: Reporter, pseudo: Pseudo | None = None) -> None:
        self.model, self.s = model, s
        self.ddp: nn.Module | None = None  # several processes: the model in DDP (wrap())
        self._ddp_params: tuple[int, ...] = ()
        preset = augment_for(stage, s.augment)
        self.cached = stage.head_only and preset == "none" and (
            s.feature_cache != "off" or stage.solve is not None)
        if stage.head_only and preset != "none":
            reporter.warn(f"augmentation '{preset}' is random, so backbone features cannot be "
                          "cached: they are recomputed every epoch "
                          "(train.augment=none caches them)")
        if self.cached:
            self.train_set: Dataset = features_for(model, data.train, "train", data, s, reporter)
            self.val_set: Dataset = features_for(model, data.val, "val", data, s, reporter)
            self.forward: Callable[[torch.Tensor], torch.Tensor] = model.head
            if pseudo is not None and len(pseudo[0]):
                x, y = self.train_set.tensors  # type: ignore[attr-defined]
                px = pool_features(model, data, s, reporter).tensors[0][pseudo[0]]
                self.train_set = TensorDataset(torch.cat([x, px.to(x.device)]),
                                               torch.cat([y, pseudo[1].to(y.dtype)]))
        else:
            items = list(data.train)
            if pseudo is not None:
                items += [(data.pool[i], float(c)) for i, c in zip(pseudo[0].tolist(),
                                                                   pseudo[1].tolist())]
            self.train_set = model.make_dataset(items, s.task, preset)
            self.val_set = model.make_dataset(data.val, s.task)
            self.forward = model
        self.mix = _mixer(s, len(s.classes)) if (
            not self.cached and getattr(model, "mixes_inputs", False)) else None
        self.collate = None if self.cached else model.collate
        self.unlabeled: Dataset | None = None
        if stage.fixmatch and len(data.pool):
            hidden = data.pool_hidden or [-1.0] * len(data.pool)
            pool = list(zip(data.pool, hidden))
            self.unlabeled = TwoViews(model.make_dataset(pool, s.task, s.semi.weak_view),
                                      model.make_dataset(pool, s.task, s.semi.strong_view))
            counts = torch.bincount(torch.tensor([int(t) for _, t in data.train]),
                                    minlength=len(s.classes)).float()
            self.prior = counts / counts.sum()  # FixMatch's distribution alignment

    @property
    def sharded(self) -> bool:
        """Several processes share this stage's batches (it trains the backbone)."""
        return self.s.world.active and not self.cached

    def loader(self, split: str, generator: torch.Generator | None = None) -> DataLoader:
        train = split == "train"
        workers = 0 if self.cached else self.s.num_workers
        drop_last = train and len(self.train_set) > self.s.batch_size and self.mix is not None
        if train and self.sharded:  # this rank's slice of each of the single run's batches
            sampler = distributed.GlobalBatches(len(self.train_set),  # type: ignore[arg-type]
                                                self.s.batch_size, self.s.world, generator,
                                                drop_last)
            return DataLoader(self.train_set, batch_sampler=sampler, generator=generator,
                              num_workers=workers, collate_fn=self.collate,
                              worker_init_fn=functools.partial(_rank_worker_seed,
                                                               self.s.world.rank))
        return DataLoader(self.train_set if train else self.val_set,
                          batch_size=self.s.batch_size if train else self.s.eval_batch_size,
                          shuffle=train, generator=generator, num_workers=workers,
                          collate_fn=self.collate, drop_last=drop_last)

    def wrap(self) -> nn.Module:
        """The module a training step runs: the model, or on several processes the model in
        DDP over the parameters that train now (wrapped again when that set changes)."""
        if not self.sharded:
            return self.forward
        params = tuple(id(p) for p in self.model.parameters() if p.requires_grad)
        if self.ddp is None or params != self._ddp_params:
            self.ddp = None  # the old wrapper's gradient hooks go with it
            self.ddp = distributed.wrap(self.model, self.s.device, not self.s.freeze_bn)
            self._ddp_params = params
        return self.ddp

    def validate(self, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets on the validation split (on several processes each rank scores
        a shard, and every rank gets all of them back in order); ``model``: another model of the
        same structure (the weights' moving average) instead of the trained one."""
        w = self.s.world
        n = len(self.val_set)  # type: ignore[arg-type]
        forward = self.forward if model is None else (model.head if self.cached else model)
        if not self.sharded or n < w.size:
            return predict_batches(forward, self.loader("val"), self.s)
        part = Subset(self.val_set, list(w.shard(n)))
        o, t = predict_batches(forward, DataLoader(
            part, batch_size=self.s.eval_batch_size, num_workers=self.s.num_workers,
            collate_fn=self.collate), self.s)
        return distributed.gather_rows(o, w), distributed.gather_rows(t, w)

    def unlabeled_loader(self, generator: torch.Generator | None = None) -> DataLoader | None:
        """FixMatch: the pool in batches of ``mu`` times the labeled batch, shuffled; an epoch
        is one pass over the pool (the labeled batches cycle)."""
        if self.unlabeled is None:
            return None
        labeled = min(self.s.batch_size, len(self.train_set))  # type: ignore[arg-type]
        return DataLoader(self.unlabeled, batch_size=self.s.semi.mu * labeled, shuffle=True,
                          generator=generator, num_workers=self.s.num_workers,
                          collate_fn=TwoViewCollate(self.collate))

    def steps(self) -> int:
        u = self.unlabeled_loader()
        return len(u) if u is not None else len(self.loader("train"))


def features_for(model: nn.Module, items: Sequence[tuple[str, float]], split: str,
                 data: LoopData, s: LoopSettings, reporter: Reporter, mode: str | None = None,
                 fingerprint: str | None = None, engine: str | None = None) -> TensorDataset:
    """Backbone features of a split, from the cache when the same backbone has seen the same data
    (``data.fingerprint`` covers every split's files and targets; the unlabeled pool has its
    own)."""
    digest = feature_cache.weights_digest(model.backbone)
    w, mode = s.world, mode or s.feature_cache
    shard = w.active and len(items) >= w.size  # several processes: each extracts a shard
    asked = engine or s.feature_engine
    engine = engines.choose(asked, s.device, s.amp_dtype, len(items), digest,
                            model.input_signature(), export=not w.active,
                            min_inputs=engines.min_inputs(model))

    def key_for(name: str) -> str:
        return feature_cache.cache_key(digest, fingerprint or data.fingerprint,
                                       model.input_signature(),
                                       f"{split}|{s.device.type}|{s.amp_dtype}"
                                       + ("|onnx" if name == "onnx" else ""))

    key = key_for(engine)
    if asked == "auto":  # an engine exported since these features were cached: reuse them
        other = "torch" if engine == "onnx" else "onnx"
        cached = feature_cache.has(key, mode) or not feature_cache.has(key_for(other), mode)
        if not (w.all_true(cached) if shard else cached):
            engine, key = other, key_for(other)
    was_training = model.training
    model.eval()

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        part = [items[i] for i in w.shard(len(items))] if shard else items
        if engine == "onnx":
            run: Callable[[Any], torch.Tensor] = engines.EngineFeatures(model, digest,
                                                                           reporter.warn)
        else:
            run = model.features
            engines.note_torch()
        reporter.start(f"features {split}", len(part))
        try:
            with torch.autocast(s.device.type, s.amp_dtype, enabled=s.amp_dtype is not None):
                x, y = feature_cache.extract(run, model.make_dataset(part, s.task),
                                             s.eval_batch_size, s.device, s.num_workers,
                                             on_batch=reporter.advance,
                                             channels_last=s.channels_last,
                                             collate=model.collate)
        finally:
            reporter.stop()
        return (distributed.gather_rows(x, w), distributed.gather_rows(y, w)) if shard else (x, y)

    # the ranks compute together unless every one of them has the features already; only rank
    # 0 writes the cache file
    lookup = w.all_true(feature_cache.has(key, mode)) if shard else True
    with reporter.phase("features"):  # extraction, or a read of the cache
        (x, y), origin = feature_cache.cached_extract(key, mode, compute, reporter.warn,
                                                       lookup=lookup, write=w.main)
    model.train(was_training)
    if origin == "disk":  # (memory hits, e.g. each self-training round's, go unsaid)
        reporter.line(f"  features {split}: {len(y)} from the {origin} cache")
    return TensorDataset(x.to(s.device), y)


def pool_features(model: nn.Module, data: LoopData, s: LoopSettings, reporter: Reporter
                  ) -> TensorDataset:
    """The unlabeled pool's backbone features (computed once, cached like the labeled ones)."""
    return features_for(model, [(p, -1.0) for p in data.pool], "unlabeled", data, s, reporter,
                        fingerprint=data.pool_fingerprint)


def pseudo_labels(model: nn.Module, stage: Stage, s: LoopSettings, data: LoopData,
                  reporter: Reporter) -> Pseudo:
    """The pseudo-labels of self-training round ``stage.pseudo_round``: chosen by the model as
    it is now (see ``semi.choose``) and saved in the run directory, or, when this round was
    chosen before (a resumed run), read back."""
    assert data.run_dir is not None
    store, w = RoundStore(data.run_dir), s.world
    saved = w.broadcast(store.load(stage.pseudo_round) if w.main else None)
    if saved is not None:  # (every rank chooses alike; rank 0's saved choice, when resuming)
        return saved
    was_training = model.training
    model.eval()
    pool = pool_features(model, data, s, reporter)
    val = features_for(model, data.val, "val", data, s, reporter)
    pool_logits, _ = predict_batches(model.head, DataLoader(pool, batch_size=1024), s)
    val_logits, val_y = predict_batches(model.head, DataLoader(val, batch_size=1024), s)
    model.train(was_training)
    train_y = torch.tensor([t for _, t in data.train], dtype=torch.long)
    idx, labels, info = choose(pool_logits, val_logits, val_y, train_y, s.classes, s.semi,
                               stage.pseudo_round, data.pool_hidden)
    info["stage"] = stage.name
    if w.main:
        store.save(stage.pseudo_round, idx, labels, info)
    if "warning" in info:
        reporter.warn(info["warning"])
    else:
        prec = "" if info["pool_precision"] is None else (
            f", {info['pool_precision']:.3f} correct (hidden labels)")
        est = "" if info["val_precision"] is None else (
            f"; on val the same rule is {info['val_precision']:.3f} precise")
        reporter.line(f"  pseudo-labels: {info['accepted']} of {info['pool']} accepted at "
                      f"p >= {s.semi.threshold:g}{prec}{est}")
    return idx, labels


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
    if s.task == "multilabel":  # at 0.5: the thresholds are tuned once training is done
        m = multilabel_metrics(outputs.sigmoid().numpy(), targets.numpy(), classes=list(s.classes))
        m.pop("per_label")
        return {"loss": loss, **m}
    probs = outputs.softmax(-1).numpy()
    # each epoch: ROC-AUC and AP of a binary task (one class, cheap), not of K one-vs-rest
    # problems; the final scoring has every metric
    m = classification_metrics(probs, targets.numpy(), list(s.classes), s.topk,
                               ranking=len(s.classes) <= 2)
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


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:  # each pass reshuffles with the loader's generator
        yield from loader


def accumulation_group(i: int, n_steps: int, accumulate: int) -> int:
    """How many micro-batches the update that step ``i`` belongs to adds up: ``accumulate``,
    fewer for an epoch's last group when ``n_steps`` does not divide evenly (its gradient is
    still the mean over its micro-batches, not a fraction of it)."""
    return min(accumulate, n_steps - i // accumulate * accumulate)


def train_epoch(model: nn.Module, batches: Batches, loader: DataLoader, state: LoopState,
                loss_fn: LossFn, s: LoopSettings, n_blocks: int, reporter: Reporter,
                scaler: torch.amp.GradScaler, unlabeled: DataLoader | None = None,
                ema: Ema | None = None) -> dict[str, float]:
    opt, sched = state.optimizer, state.scheduler
    assert opt is not None and sched is not None
    train_mode(model, n_blocks, s.freeze_bn)
    total, seen, t0 = 0.0, 0, time.perf_counter()
    opt.zero_grad(set_to_none=True)
    u_stats = {"accepted": 0.0, "seen": 0.0, "known": 0.0, "correct": 0.0}
    prior = batches.prior if (unlabeled is not None and s.semi.align) else None
    p_mean, n_means = None, 0  # the weak view's running mean over this epoch (alignment)
    forward = batches.wrap()  # the model (in DDP on several processes)
    weights = getattr(loader.batch_sampler, "weights", None)  # each slice's share (GlobalBatches)
    steps: Any = enumerate(loader) if unlabeled is None else enumerate(
        zip(_cycle(loader), unlabeled))
    n_steps = len(loader) if unlabeled is None else len(unlabeled)
    for i, batch in steps:
        update = (i + 1) % s.accumulate == 0 or i + 1 == n_steps
        group = accumulation_group(i, n_steps, s.accumulate)
        if unlabeled is None:
            x, y = batch
            loss, n = train_step(model, forward, x, y, loss_fn, s, opt, scaler, batches.mix,
                                 group, update, weights[i] if weights else 1.0)
        else:
            (x, y), (weak, strong, hidden) = batch
            loss, n, st = fixmatch_step(model, x, y, weak, strong, hidden, loss_fn, s, opt,
                                        scaler, s.semi.threshold, s.semi.lambda_u, group,
                                        update, prior, p_mean)
            u_stats = {k: u_stats[k] + st[k] for k in u_stats}
            n_means += 1
            p_mean = st["p_mean"] if p_mean is None else p_mean + (st["p_mean"] - p_mean) / n_means
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at epoch {state.epoch + 2}, step {i + 1}: lower "
                "optim.lr or set train.grad_clip; the last good checkpoint is kept"
            )
        if update:
            sched.step()
            state.step += 1
            if ema is not None:
                ema.update(model)
        total += loss * n
        seen += n
        reporter.advance(1, f"loss {total / seen:.4f}", seen / (time.perf_counter() - t0))
    dt = time.perf_counter() - t0
    rec = {"train_loss": total / max(1, seen), "train_time_s": dt, "samples_per_s": seen / dt}
    if unlabeled is not None:  # FixMatch: how much of the pool taught, and how well
        rec["unlabeled_accepted"] = u_stats["accepted"] / max(1.0, u_stats["seen"])
        if u_stats["known"]:
            rec["pseudo_precision"] = u_stats["correct"] / u_stats["known"]
    return rec


def solve_epoch(model: nn.Module, stage: Stage, batches: Batches, loss_fn: LossFn,
                s: LoopSettings) -> dict[str, float]:
    """A closed-form stage (prototypes): the head is set from the cached training features."""
    assert stage.solve is not None and batches.cached
    x, y = batches.train_set.tensors  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    stage.solve(model.head, x, y)
    model.eval()
    with torch.no_grad():
        loss = loss_value(model.head(x).float().cpu(), y.cpu(), loss_fn, s)
    dt = max(time.perf_counter() - t0, 1e-9)
    return {"train_loss": loss, "train_time_s": dt, "samples_per_s": len(y) / dt}


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
    if s.world.active and not s.freeze_bn and any(not st.head_only for st in stages):
        distributed.sync_batchnorm(model, s.device)  # CUDA: statistics of the global batch
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
        pseudo = None
        if stage.pseudo_round:  # chosen by the model so far (or read back when resuming)
            pseudo = pseudo_labels(model, stage, s, data, reporter)
            # each round trains a new head; a round that accepted nothing goes on training the
            # one it has (a new one would only redraw the labels-only probe's initialisation)
            if stage.head_only and not resuming and len(pseudo[0]):
                torch.manual_seed(s.seed * 1_000_003 + si)
                model.reset_head(model.head[-1].out_features)
                model.head.to(s.device)
        batches = Batches(model, stage, s, data, reporter, pseudo)
        state.optimizer, state.scheduler = _stage_optimizer(model, stage, s, batches.steps())
        ema = Ema(model, s.ema) if s.ema and stage.solve is None else None
        state.extra["ema"] = ema
        if resuming:
            info = load_state(resume_from, model, state.optimizer, state.scheduler)
            for k in ("stage_epoch", "epoch", "step", "best", "best_epoch", "bad_epochs",
                      "stop", "stop_stage", "stop_reason"):
                setattr(state, k, info[k])
            if ema is not None and info.get("ema_steps"):
                ema.load(resume_from, info["ema_steps"])
            if info.get("scaler"):
                scaler.load_state_dict(info["scaler"])
            s.world.barrier()  # every rank has read the state before rank 0 writes a new one
        reporter.line(f"[bold]stage {si + 1}/{len(stages)}: {stage.name}[/] "
                      f"({stage.epochs} epochs, lr {stage.lr:g}"
                      f"{', cached features' if batches.cached else ''})")
        for e in range(state.stage_epoch + 1, stage.epochs):
            if state.stop or state.stop_stage:
                break
            n_blocks = stage.blocks_at(e)
            trainable = set_trainable(model, n_blocks)
            gen = _seed_epoch(s.seed, si, e, s.world.rank if batches.sharded else 0)
            loader = batches.loader("train", gen)
            unlabeled = batches.unlabeled_loader(gen)
            if stage.solve is not None:
                rec = solve_epoch(model, stage, batches, loss_fn, s)
            else:
                reporter.start(f"epoch {state.epoch + 2} {stage.name}",
                               len(loader) if unlabeled is None else len(unlabeled))
                try:
                    rec = train_epoch(model, batches, loader, state, loss_fn, s, n_blocks,
                                      reporter, scaler, unlabeled, ema)
                finally:
                    reporter.stop()
            model.eval()
            outputs, targets = batches.validate()
            if not torch.isfinite(outputs).all():  # the last step can blow up the weights
                raise TrainingDiverged(
                    f"validation outputs became non-finite after epoch {state.epoch + 2}: lower "
                    "optim.lr or set train.grad_clip; the last good checkpoint is kept")
            val = score(outputs, targets, loss_fn, s)
            if ema is not None:  # the moving average, scored the same way (ema_val_*)
                o_ema, t_ema = batches.validate(ema.module)
                if torch.isfinite(o_ema).all():
                    rec.update({f"ema_val_{k}": v for k, v in score(o_ema, t_ema, loss_fn,
                                                                     s).items()
                                if isinstance(v, (int, float))})
            state.epoch, state.stage_epoch = state.epoch + 1, e
            record = {"epoch": state.epoch + 1, "stage": stage.name, "stage_epoch": e + 1,
                      "trainable_params": trainable,
                      "unfrozen_blocks": min(n_blocks, len(model.blocks())),
                      "lr": max(g["lr"] for g in state.optimizer.param_groups), **rec,
                      **{f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float))}}
            with _defer_sigint():  # Ctrl-C must not split the epoch's bookkeeping in two
                for h in hooks:
                    h.on_epoch_end(state, record)
                _share_decisions(state, s.world)
            reporter.line(_epoch_line(record, s.monitor))
        if state.stop:
            break
    for h in hooks:
        h.on_train_end(state)
    return state


SHARED_DECISIONS = ("best", "best_epoch", "bad_epochs", "stop", "stop_stage", "stop_reason")


def _share_decisions(state: LoopState, world: distributed.World) -> None:
    """Several processes: the hooks run on rank 0 only (they write the run directory and
    decide best epoch and early stop); every rank takes rank 0's decisions, so all stop
    together."""
    if world.active:
        got = world.broadcast({k: getattr(state, k) for k in SHARED_DECISIONS})
        for k, v in got.items():
            setattr(state, k, v)


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
    ema = r.get(f"ema_val_{monitor}")
    avg = "" if ema is None else f" (ema {ema:.4f}{', kept' if r.get('kept') == 'ema' else ''})"
    return (f"  epoch {r['epoch']:>3} {r['stage'][:8]:<8} loss {r['train_loss']:.4f} | val loss "
            f"{r['val_loss']:.4f} {monitor[:8]} {r[f'val_{monitor}']:.4f}{avg} | "
            f"{r['samples_per_s']:.0f}/s{star}")
