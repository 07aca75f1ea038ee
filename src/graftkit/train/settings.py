"""The plain values the training loop runs on (``LoopSettings``) and the data it trains on
(``LoopData``): the session fills them from the config; nothing in ``train/`` reads the config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .distributed import World
from .semi import SemiSettings


@dataclass(frozen=True)
class LoopSettings:
    task: str
    classes: Sequence[str]
    batch_size: int = 32
    eval_batch_size: int = 8
    num_workers: int = 0
    augment: str = "auto"
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    layer_decay: float = 1.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 5
    gamma: float = 0.1
    grad_clip: float | None = None
    accumulate: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    monitor: str = "accuracy"
    seed: int = 0
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    feature_cache: str = "disk"
    feature_engine: str = "torch"  # or onnx, auto: see engines.py
    freeze_bn: bool = True
    ema: float | None = None  # train.ema: the decay of the weights' moving average (ema.py)
    topk: int = 5
    target_mean: float = 0.0  # regression targets are standardised for training
    target_std: float = 1.0
    semi: SemiSettings = field(default_factory=SemiSettings)
    world: World = field(default_factory=World)  # several processes (torchrun): distributed.py


@dataclass
class LoopData:
    train: Sequence[tuple[str, float]]
    val: Sequence[tuple[str, float]]
    fingerprint: str
    # semi-supervised runs: the unlabeled pool, its true targets where known (reported, never
    # trained on), its content key, and the run directory that keeps each round's pseudo-labels
    pool: Sequence[str] = ()
    pool_hidden: Sequence[float] | None = None
    pool_fingerprint: str = ""
    run_dir: Path | None = None
