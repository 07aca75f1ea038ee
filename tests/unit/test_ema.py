"""train.ema: the moving average's warmup and decay, and its place in the resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graftkit.train.checkpoint import load_model_state, read_state_info, save_state
from graftkit.train.ema import Ema


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.Linear(8, 2))


def test_the_average_starts_as_a_copy_and_then_lags_behind() -> None:
    model = _model()
    ema = Ema(model, decay=0.99)
    w = lambda m: m[0].weight.detach().clone()  # noqa: E731
    history = [w(model)]
    with torch.no_grad():
        for _ in range(5):
            model[0].weight.add_(1.0)  # an optimizer step that moves every weight by 1
            history.append(w(model))
            ema.update(model)
            if ema.steps == 1:  # decay 0 at the first step: a copy
                assert torch.equal(w(ema.module), w(model))
    # step t mixes with 1 - t^(-2/3): the average is behind the weights, ahead of the start
    decays = [1 - t ** (-2 / 3) for t in range(2, 6)]
    expect = history[1]
    for d, h in zip(decays, history[2:]):
        expect = d * expect + (1 - d) * h
    assert torch.allclose(w(ema.module), expect, atol=1e-5)
    assert (w(ema.module) < w(model)).all() and (w(ema.module) > history[0]).all()
    assert not ema.module.training  # validated in eval mode
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked  # buffers copied


def test_the_average_is_part_of_the_resumable_state(tmp_path: Path) -> None:
    model = _model()
    ema = Ema(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with torch.no_grad():
        for _ in range(3):
            model[2].weight.mul_(1.5)
            ema.update(model)
    path = tmp_path / "last.safetensors"
    save_state(path, model, opt, sched, {"ema_steps": ema.steps}, extra={"ema": ema.module})
    again = Ema(_model(), decay=0.9)
    again.load(path, read_state_info(path)["ema_steps"])
    assert again.steps == 3
    for a, b in zip(again.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    plain = _model()
    load_model_state(path, plain)  # the model's own weights are not the average's
    assert torch.equal(plain[2].weight, model[2].weight)
    assert not torch.equal(plain[2].weight, ema.module[2].weight)
    with pytest.raises(RuntimeError):
        load_model_state(path, torch.nn.Linear(4, 2), prefix="ema")
