"""Optimizers and learning-rate schedules, registered by name.

A schedule is a pure function ``factor(step, total_steps, warmup_steps) -> multiplier`` wrapped in
``torch.optim.lr_scheduler.LambdaLR``; warmup (linear from 0) composes with every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ..registry import Registry

OptimizerFn = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFn] = Registry("optimizer")


@OPTIMIZERS.register("sgd", "SGD with momentum (Nesterov by default)")
def _sgd(groups: list[dict[str, Any]], lr: float, momentum: float, nesterov: bool) -> Any:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


@OPTIMIZERS.register("adam", "Adam (weight decay as L2)")
def _adam(groups: list[dict[str, Any]], lr: float, **_: Any) -> Any:
    return torch.optim.Adam(groups, lr=lr)


@OPTIMIZERS.register("adamw", "AdamW (decoupled weight decay)")
def _adamw(groups: list[dict[str, Any]], lr: float, **_: Any) -> Any:
    return torch.optim.AdamW(groups, lr=lr)


@OPTIMIZERS.register("adagrad", "Adagrad")
def _adagrad(groups: list[dict[str, Any]], lr: float, **_: Any) -> Any:
    return torch.optim.Adagrad(groups, lr=lr)


@OPTIMIZERS.register("rmsprop", "RMSprop with momentum")
def _rmsprop(groups: list[dict[str, Any]], lr: float, momentum: float, **_: Any) -> Any:
    return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)


def build_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name)(groups, lr=lr, momentum=momentum, nesterov=nesterov)


ScheduleFn = Callable[..., float]
SCHEDULES: Registry[ScheduleFn] = Registry("schedule")


@SCHEDULES.register("constant", "constant learning rate")
def constant(t: float, **_: Any) -> float:
    return 1.0


@SCHEDULES.register("cosine", "cosine decay to 0 (Loshchilov & Hutter 2017)")
def cosine(t: float, **_: Any) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("step", "multiply by gamma every step_size epochs")
def step(t: float, *, epoch: float, step_size: int, gamma: float, **_: Any) -> float:
    return gamma ** int(epoch // step_size)


@SCHEDULES.register("one_cycle", "one-cycle: peak at 30% of training, cosine down (Smith)")
def one_cycle(t: float, **_: Any) -> float:
    peak, start, end = 0.3, 1.0 / 25.0, 1.0 / 1e4
    if t < peak:
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * t / peak))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * (t - peak) / (1.0 - peak)))


def lr_factor(
    name: str, step: int, total: int, warmup: int, steps_per_epoch: int,
    step_size: int = 5, gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``."""
    fn = SCHEDULES.get(name)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return fn(min(1.0, t), epoch=step / max(1, steps_per_epoch), step_size=step_size, gamma=gamma)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total: int, warmup: int, steps_per_epoch: int,
    step_size: int = 5, gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    SCHEDULES.get(name)  # fail early on a bad name
    fn = partial(lr_factor, name, total=total, warmup=warmup, steps_per_epoch=steps_per_epoch,
                 step_size=step_size, gamma=gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
