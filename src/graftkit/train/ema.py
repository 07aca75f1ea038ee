"""``train.ema``: an exponential moving average of the weights, validated every epoch beside the
weights themselves; the run keeps whichever scores better (BestCheckpoint).

timm's ``ModelEmaV3`` does the averaging, with its warmup: after ``t`` optimizer steps of a stage
the decay is ``min(decay, 1 - t ** (-2/3))`` (0 at the first step: the average starts as a
copy), so a short run on a small set averages its recent steps rather than its initialisation.
The average restarts with each stage (a stage changes what trains); it is saved in the run's
resumable state (``checkpoints/last.safetensors``, prefix ``ema.``) with its step count, so
``--resume`` goes on with the same average.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model_state


class Ema:
    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.decay, self.steps = decay, 0

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode; same structure and device as the trained one)."""
        return self._ema.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """After an optimizer step of ``model``."""
        self.steps += 1
        self._ema.update(model, step=self.steps)

    def load(self, state_file: Path, steps: int) -> None:
        """The average saved in a resumable state file, ``steps`` optimizer steps in."""
        load_model_state(state_file, self.module, prefix="ema")
        self.steps = steps
