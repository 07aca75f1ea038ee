"""A probe's resumable state leaves out the backbone it never trained, and refuses a rebuilt model
whose backbone is not the one the run had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from graftkit.errors import GraftError
from graftkit.train.checkpoint import load_model_state, load_state, save_state, weights_digest
from graftkit.train.hooks import LoopState, StateCheckpoint


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
