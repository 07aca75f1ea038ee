"""Hooks: small pieces of behaviour the training loop calls on a short list of events.

Events (in order): ``on_stage_start(state)``, ``on_epoch_end(state, record)`` after validation,
``on_train_end(state)``. A hook may set ``state.stop = True`` to end training after this epoch.
Hooks run in list order; ``BestCheckpoint`` must come before ``StateCheckpoint`` so the saved
state knows the best value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..evaluate.metrics import is_better
from ..run import finite
from .checkpoint import atomic_save, load_prefixed, save_state, save_weights, weights_digest

BEST_HEAD = "best"  # the state's prefix for a head-only stage's best head, not yet written


@dataclass
class LoopState:
    model: torch.nn.Module
    scaler: torch.amp.GradScaler | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    stage_index: int = 0
    stage_epoch: int = -1  # last completed epoch within the stage
    epoch: int = -1  # last completed epoch overall
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stop: bool = False  # end training
    stop_stage: bool = False  # end this stage, go on with the next
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "stage_index": self.stage_index, "stage_epoch": self.stage_epoch, "epoch": self.epoch,
            "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stop": self.stop, "stop_stage": self.stop_stage,
            "stop_reason": self.stop_reason,
            "scaler": (self.scaler.state_dict()
                       if self.scaler and self.scaler.is_enabled() else None),
            "ema_steps": self.extra["ema"].steps if self.extra.get("ema") else None,
        }


class Hook(Protocol):
    def on_stage_start(self, state: LoopState) -> None: ...
    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None: ...
    def on_train_end(self, state: LoopState) -> None: ...


class BaseHook:
    def on_stage_start(self, state: LoopState) -> None:
        pass

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        pass

    def on_train_end(self, state: LoopState) -> None:
        pass


class History(BaseHook):
    """Appends one JSON line per epoch to ``history.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(finite(record)) + "\n")  # strict JSON: NaN as null


class BestCheckpoint(BaseHook):
    """Keeps the weights of the best epoch (by ``metric`` on validation) in ``model.safetensors``.

    The choice is made among the epochs of each stage: a multi-stage strategy's result is the
    model its last stage produced (LP-FT's is the fine-tuned model, not its probe), so the
    best-so-far restarts when a stage begins, and what the file holds at the end is the last
    stage's best epoch. With ``train.ema`` an epoch's candidate is
    its moving average when that validated better (``ema_val_<metric>``); the record says which
    (``kept``: ``weights`` or ``ema``).

    In a stage that trains the head alone (``head_only``: each stage's flag) the backbone cannot
    change, so an improvement keeps only the head's weights, in memory and in the resumable
    state (``state.extra[BEST_HEAD]``, which :class:`StateCheckpoint` saves), and the file is
    written once, when the stage ends or training ends or stops (:meth:`flush`): a MiniLM probe
    writes its 90 MB once, not at every improving epoch. ``resume_from``: the state file of the
    attempt being resumed, whose pending head is taken up.
    """

    def __init__(self, path: Path, metric: str, min_delta: float = 0.0,
                 head_only: list[bool] | None = None, resume_from: Path | None = None) -> None:
        self.path, self.metric, self.min_delta = path, metric, min_delta
        self.head_only = head_only or []
        self.pending: dict[str, torch.Tensor] | None = None  # the best head, not yet written
        self._resume_from = resume_from
        self._epochs = 0  # finished in this process

    def on_stage_start(self, state: LoopState) -> None:
        self.flush(state.model, state.extra)  # the stage before's best, before this one trains
        if self._resume_from is not None:
            self.pending = load_prefixed(self._resume_from, BEST_HEAD) or None
            state.extra[BEST_HEAD], self._resume_from = self.pending, None
        # each stage has its own best (a self-training round's new head is not compared with
        # the stage before's, nor early-stopped for trailing it)
        state.best, state.best_epoch = None, None

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        self._epochs += 1
        value, model = record[f"val_{self.metric}"], state.model
        ema, averaged = state.extra.get("ema"), record.get(f"ema_val_{self.metric}")
        if ema is not None and averaged is not None:
            use = is_better(averaged, value, self.metric)  # a tie keeps the weights themselves
            record["kept"] = "ema" if use else "weights"
            if use:
                value, model = averaged, ema.module
        # The first epoch is always kept, even with a NaN metric (e.g. R² of one example), so a
        # finished run always has weights.
        first = state.best_epoch is None
        record["best"] = first or is_better(value, state.best, self.metric, self.min_delta)
        if record["best"]:
            state.best, state.best_epoch, state.bad_epochs = value, state.epoch, 0
            if self._head_only(state):
                self.pending = {f"head.{k}": v.detach().clone()
                                for k, v in model.head.state_dict().items()}
                state.extra[BEST_HEAD] = self.pending
            else:
                save_weights(model, self.path)
        else:
            state.bad_epochs += 1

    def on_train_end(self, state: LoopState) -> None:
        self.flush(state.model, state.extra)

    def flush(self, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> None:
        """Write the pending best head, if there is one, with ``model``'s backbone (the one it
        was trained on: a head-only stage does not change it)."""
        if self.pending is None:
            return
        weights = model.state_dict()
        weights.update(self.pending)
        atomic_save(weights, self.path)
        self.pending = None
        if extra is not None:
            extra[BEST_HEAD] = None

    def on_error(self, model: torch.nn.Module) -> None:
        """Training stopped on an error (Ctrl-C, a diverged step): the pending best is written,
        once this process has finished an epoch. Not before: a resumed model may not hold the
        run's weights yet (a resume that failed to load them), and the state file still holds
        the pending head for the next attempt."""
        if self._epochs:
            self.flush(model)

    def _head_only(self, state: LoopState) -> bool:
        return (len(self.head_only) > state.stage_index and self.head_only[state.stage_index]
                and isinstance(getattr(state.model, "head", None), torch.nn.Module))


class EarlyStopping(BaseHook):
    """After ``patience`` epochs without improvement, ends the stage (and, in the last stage,
    training). The count restarts at each stage, so LP-FT's probe stopping early still leads on
    to the fine-tuning stage."""

    def __init__(self, patience: int, last_stage: int = 0) -> None:
        self.patience, self.last_stage = patience, last_stage

    def on_stage_start(self, state: LoopState) -> None:
        state.bad_epochs, state.stop_stage = 0, False

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        if state.bad_epochs >= self.patience:
            state.stop_reason = (f"early stop in stage {state.stage_index + 1}: no improvement "
                                 f"for {self.patience} epochs")
            if state.stage_index >= self.last_stage:
                state.stop = True
            else:
                state.stop_stage = True


class StateCheckpoint(BaseHook):
    """Writes the resumable state (weights, optimizer, scheduler, counters) after every epoch.

    ``head_only``: each stage's flag. While every stage so far has trained the head alone, the
    backbone is still the one the run was built with, so the state leaves it out (with its
    digest, checked on resume): 30 epochs of a probe write kilobytes, not 30 networks."""

    def __init__(self, path: Path, head_only: list[bool] | None = None) -> None:
        self.path, self.head_only = path, head_only or []
        self._frozen: tuple[str, str] | None = None  # ("backbone", its digest), once per run

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        assert state.optimizer is not None and state.scheduler is not None
        ema = state.extra.get("ema")
        frozen = None
        if (len(self.head_only) > state.stage_index and all(self.head_only[:state.stage_index + 1])
                and hasattr(state.model, "backbone")):
            if self._frozen is None:
                self._frozen = ("backbone", weights_digest(state.model.backbone))
            frozen = self._frozen
        save_state(self.path, state.model, state.optimizer, state.scheduler, state.info(),
                   extra={"ema": ema.module} if ema is not None else None, frozen=frozen,
                   tensors={BEST_HEAD: state.extra.get(BEST_HEAD) or {}})


class SnapshotAtStage(BaseHook):
    """Saves the weights as they are when stage ``stage_index`` starts (the end of the stage
    before it), once: a resumed run keeps the snapshot its first attempt took."""

    def __init__(self, path: Path, stage_index: int) -> None:
        self.path, self.stage_index = path, stage_index

    def on_stage_start(self, state: LoopState) -> None:
        if state.stage_index == self.stage_index and not self.path.is_file():
            save_weights(state.model, self.path)
