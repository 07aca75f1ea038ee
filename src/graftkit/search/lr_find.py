"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural
Networks", section 3.3): train for a short while with the learning rate growing exponentially
from tiny to huge, and watch the loss. Where it falls fastest is a good learning rate; where it
blows up is too far.

It runs the strategy's last stage (the one whose learning rate ``optim.lr`` sets) on a throwaway
copy of the model, through the same batches, optimizer, parameter groups and training step
(``train.step.train_step``: autocast, MixUp/CutMix, AugMix's JSD) as training, one optimizer
step per batch; a head-only stage runs on cached features, so a linear probe's test takes
seconds. For LP-FT the fine-tuning stage is tested from the new (untrained) head, so its
suggestion errs high.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed (EMA with bias correction)
    suggestion: float  # steepest descent of the smoothed loss, before its minimum
    min_loss_lr: float  # where the smoothed loss is lowest (a safe pick is a tenth of it)
    strategy: str
    stopped: str


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(steepest-descent lr, min-loss lr) of a smoothed loss curve on a log-lr axis. The
    steepest point is looked for before the minimum (past it the loss is on its way up); when
    the minimum comes in the first tenth (the loss hardly moved), over the whole curve."""
    x, y = np.log10(np.asarray(lrs)), np.asarray(losses)
    i_min = int(np.nanargmin(y))
    skip = max(1, len(y) // 10)  # the first steps are noise around the initial loss
    stop = i_min + 1 if i_min >= skip + 2 else len(y)
    grad = np.gradient(y[skip:stop], x[skip:stop]) if stop - skip >= 3 else np.zeros(1)
    return float(lrs[skip + int(np.argmin(grad))]), float(lrs[i_min])


def lr_find(cfg: Any, start: float = 1e-7, end: float = 1.0, steps: int = 100,
            quiet: bool = False) -> LRFind:
    import torch

    from ..launch import monitor_metric, resolve_inputs, validate
    from ..session import build_session
    from ..train.loop import Batches, set_trainable, train_mode
    from ..train.optim import build_optimizer
    from ..train.step import train_step

    if not (0 < start < end):
        from ..errors import ConfigError

        raise ConfigError(f"lr-find: need 0 < start < end (got {start:g}, {end:g})")
    cfg = resolve_inputs(cfg)
    validate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        session = build_session(cfg, Path(tmp), monitor_metric(cfg), quiet=quiet)
    model, s, stage = session.model, session.settings, session.stages[-1]
    model.to(s.device)
    batches = Batches(model, stage, s, session.data, session.reporter)
    n_blocks = max(stage.blocks_at(e) for e in range(stage.epochs))
    set_trainable(model, n_blocks)
    groups = model.param_groups(1.0, s.weight_decay, s.layer_decay)
    scale = [g["lr"] for g in groups]  # layer-wise decay factors relative to the top
    opt = build_optimizer(s.optimizer, groups, start, s.momentum, s.nesterov)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp_dtype == torch.float16)
    opt.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(s.seed)
    loader = batches.loader("train", gen)
    lrs, smoothed, avg, best, stopped = [], [], 0.0, math.inf, "reached the end lr"
    session.reporter.start(f"lr-find {cfg.strategy.name}", steps)
    try:
        for i, (x, y) in zip(range(steps), cycle(loader)):
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for g, k in zip(opt.param_groups, scale):
                g["lr"] = lr * k
            train_mode(model, n_blocks, s.freeze_bn)
            loss, _ = train_step(model, batches.forward, x, y, session.loss_fn, s, opt, scaler,
                                 batches.mix)
            if not math.isfinite(loss):
                stopped = f"loss became {loss} at lr {lr:.2e}"
                break
            avg = 0.98 * avg + 0.02 * loss
            value = avg / (1 - 0.98 ** (i + 1))
            lrs.append(lr)
            smoothed.append(value)
            best = min(best, value)
            session.reporter.advance(1, f"lr {lr:.1e} loss {value:.4f}")
            if i > steps // 10 and value > 4 * best:
                stopped = f"loss passed 4x its minimum at lr {lr:.2e}"
                break
    finally:
        session.reporter.stop()
    if len(lrs) < 5:
        from ..errors import GraftError

        raise GraftError(f"lr-find: the loss diverged after {len(lrs)} steps ({stopped}); "
                         "lower --start")
    steep, at_min = suggest(lrs, smoothed)
    return LRFind(lrs, smoothed, steep, at_min, cfg.strategy.name, stopped)


def plot(result: LRFind, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.axvline(result.suggestion, color="tab:red", ls="--",
               label=f"suggestion {result.suggestion:.2e} (steepest descent)")
    ax.axvline(result.min_loss_lr, color="tab:gray", ls=":",
               label=f"minimum loss at {result.min_loss_lr:.2e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"learning-rate range test: {result.strategy}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


OUTPUT_NAMES = ("lr_find.json", "lr_find.png")


def write(result: LRFind, out: Path) -> tuple[Path, Path]:
    from .. import run as rd

    js, png = (out / n for n in OUTPUT_NAMES)
    out.mkdir(parents=True, exist_ok=True)
    rd.write_json(js, asdict(result))
    return js, plot(result, png)


def centre_space(space: Any, s: Any, out: Path, quiet: bool) -> None:
    """``graft search --lr-find``: centre each per-strategy learning-rate range (log, same
    width) on the range test's suggestion for that strategy (geometric mean over the strategies
    a range serves)."""
    from ..config import build_config
    from ..train.progress import console

    strategies = next((v.choices for v in space.variants if v.key == "strategy.name"
                       and v.choices), None)
    found: dict[str, float] = {}
    for v in space.variants:
        if v.key != "optim.lr" or not v.log or v.low is None:
            continue
        serves = v.when.get("strategy.name") or strategies or [
            build_config(s.config, {**s.overrides, "data.path": s.data}).strategy.name]
        for name in serves:
            if name not in found:
                cfg = build_config(s.config, {**s.overrides, "data.path": s.data,
                                              "strategy.name": name})
                r = lr_find(cfg, steps=60, quiet=True)
                write(r, out / "lr_find" / name)
                found[name] = r.suggestion
        centre = float(np.exp(np.mean([np.log(found[n]) for n in serves])))
        old = (v.low, v.high)
        v.recentre(centre)
        if not quiet:
            console.print(f"lr-find: optim.lr for {', '.join(serves)}: {old[0]:.1e}..{old[1]:.1e}"
                          f" -> {v.low:.1e}..{v.high:.1e}", highlight=False)
