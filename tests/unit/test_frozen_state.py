"""A probe's resumable state leaves out the backbone it never trained, and refuses a rebuilt model
whose backbone is not the one the run had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from graftkit.errors import GraftError
from graftkit.train.checkpoint import (
    load_model_state,
    load_prefixed,
    load_state,
    save_state,
    weights_digest,
)
from graftkit.train.hooks import BEST_HEAD, BestCheckpoint, LoopState, StateCheckpoint


class Net(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 2)


def _trained_head(seed: int = 0) -> tuple[Net, torch.optim.Optimizer, Any]:
    net = Net(seed)
    opt = torch.optim.AdamW(net.head.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        net.head(torch.randn(4, 8)).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return net, opt, sched


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_the_state_of_a_head_only_stage_holds_the_head_and_resumes(tmp_path: Path) -> None:
    net, opt, sched = _trained_head()
    path = tmp_path / "last.safetensors"
    frozen = ("backbone", weights_digest(net.backbone))
    save_state(path, net, opt, sched, {"epoch": 2}, frozen=frozen)
    keys = _keys(path)
    assert not any(k.startswith("model.backbone.") for k in keys)
    assert {"model.head.weight", "model.head.bias"} <= keys

    again = Net(0)  # rebuilt as a resumed run rebuilds it: the same backbone, a fresh head
    opt2 = torch.optim.AdamW(again.head.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    assert load_state(path, again, opt2, sched2) == {"epoch": 2}
    for (k, a), b in zip(again.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    assert sched2.last_epoch == sched.last_epoch
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)

    plain = Net(0)  # only the weights (a cached stage reads them before extracting)
    load_model_state(path, plain)
    assert torch.equal(plain.head.weight, net.head.weight)


def test_a_rebuilt_model_with_another_backbone_is_refused(tmp_path: Path) -> None:
    net, opt, sched = _trained_head()
    path = tmp_path / "last.safetensors"
    save_state(path, net, opt, sched, {}, frozen=("backbone", weights_digest(net.backbone)))
    other = Net(seed=1)
    with pytest.raises(GraftError, match="other backbone weights"):
        load_model_state(path, other)


def test_the_digest_ignores_layout_and_sees_any_change() -> None:
    net = Net()
    fp = weights_digest(net.backbone)
    net.to(memory_format=torch.channels_last)
    assert weights_digest(net.backbone) == fp
    with torch.no_grad():
        net.backbone[0].weight[0, 0, 0, 0] += 1e-7
    assert weights_digest(net.backbone) != fp


def test_the_hook_writes_the_whole_model_once_a_stage_trains_the_backbone(tmp_path: Path
                                                                          ) -> None:
    net, opt, sched = _trained_head()
    path = tmp_path / "last.safetensors"
    hook = StateCheckpoint(path, head_only=[True, False])  # LP-FT: a probe, then fine-tuning
    state = LoopState(net, optimizer=opt, scheduler=sched)
    hook.on_epoch_end(state, {})
    assert not any(k.startswith("model.backbone.") for k in _keys(path))
    state.stage_index = 1
    hook.on_epoch_end(state, {})
    assert "model.backbone.0.weight" in _keys(path)
    # a run of head-only stages (self-training rounds) stays small throughout
    hook = StateCheckpoint(path, head_only=[True, True])
    hook.on_epoch_end(state, {})
    assert not any(k.startswith("model.backbone.") for k in _keys(path))


def _epoch(hook: BestCheckpoint, state: LoopState, value: float, weight: float) -> None:
    with torch.no_grad():
        state.model.head.weight.fill_(weight)
    state.epoch += 1
    hook.on_epoch_end(state, {"val_accuracy": value})


def test_a_head_only_stage_writes_its_best_weights_once(tmp_path: Path, monkeypatch: Any
                                                        ) -> None:
    """Improvements of a probe keep the head in memory and in the resumable state; the whole
    model is written when the stage ends, with the best epoch's head."""
    from graftkit.train import checkpoint, hooks

    writes: list[Path] = []
    real = checkpoint.atomic_save
    for module in (checkpoint, hooks):
        monkeypatch.setattr(module, "atomic_save", lambda t, p, m=None: (writes.append(p),
                                                                         real(t, p, m)))
    net, opt, sched = _trained_head()
    weights, last = tmp_path / "model.safetensors", tmp_path / "last.safetensors"
    best = BestCheckpoint(weights, "accuracy", head_only=[True, False])
    keep = StateCheckpoint(last, head_only=[True, False])
    state = LoopState(net, optimizer=opt, scheduler=sched)
    best.on_stage_start(state)
    for value, w in ((0.5, 1.0), (0.7, 2.0), (0.6, 3.0)):  # epoch 2 is the best
        _epoch(best, state, value, w)
        keep.on_epoch_end(state, {})
    assert not weights.exists() and writes.count(weights) == 0
    assert torch.equal(load_prefixed(last, BEST_HEAD)["head.weight"], torch.full((2, 8), 2.0))

    # a run killed here resumes with the pending head and writes it at the stage's end
    again, opt2, sched2 = _trained_head()
    resumed = BestCheckpoint(weights, "accuracy", head_only=[True, False],
                             resume_from=last)
    state2 = LoopState(again, optimizer=opt2, scheduler=sched2)
    resumed.on_stage_start(state2)  # stage 0 again, as the loop restarts it
    state2.stage_index = 1
    resumed.on_stage_start(state2)  # the fine-tuning stage begins: the probe's best is written
    saved = load_file(str(weights))
    assert torch.equal(saved["head.weight"], torch.full((2, 8), 2.0))
    assert torch.equal(saved["backbone.0.weight"], again.backbone[0].weight)
    assert writes.count(weights) == 1 and resumed.pending is None

    # a stage that trains the backbone writes at each improvement, as before
    _epoch(resumed, state2, 0.1, 4.0)
    assert writes.count(weights) == 2
    assert torch.equal(load_file(str(weights))["head.weight"], torch.full((2, 8), 4.0))


def test_training_that_ends_or_stops_writes_the_pending_best(tmp_path: Path) -> None:
    net, opt, sched = _trained_head()
    weights = tmp_path / "model.safetensors"
    best = BestCheckpoint(weights, "accuracy", head_only=[True])
    state = LoopState(net, optimizer=opt, scheduler=sched)
    best.on_stage_start(state)
    _epoch(best, state, 0.9, 5.0)
    _epoch(best, state, 0.8, 6.0)
    best.flush(net)  # what the session does when training stops on an error
    assert torch.equal(load_file(str(weights))["head.weight"], torch.full((2, 8), 5.0))
    _epoch(best, state, 0.95, 7.0)
    best.on_train_end(state)
    assert torch.equal(load_file(str(weights))["head.weight"], torch.full((2, 8), 7.0))
    assert best.pending is None and state.extra[BEST_HEAD] is None
