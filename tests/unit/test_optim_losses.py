"""Optimizers, schedules and losses: every registered one, checked by behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graftkit.train.losses import LOSSES, auto_class_weights, build_loss
from graftkit.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler, lr_factor


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_each_optimizer_reduces_a_quadratic(name: str) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10))
    opt = build_optimizer(name, [{"params": [w]}], lr=0.05)
    start = float((w.detach()**2).sum())
    for _ in range(50):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach()**2).sum()) < 0.5 * start


def test_every_optimizer_schedule_and_loss_is_tested() -> None:
    assert set(OPTIMIZERS.names()) == {"sgd", "adam", "adamw", "adagrad", "rmsprop"}
    assert set(SCHEDULES.names()) == {"constant", "cosine", "step", "one_cycle"}
    # bce and asl: tests/unit/test_multilabel.py::test_losses
    assert set(LOSSES.names()) == {"cross_entropy", "focal", "mse", "huber", "l1", "bce", "asl"}


def test_schedules() -> None:
    f = lambda name, s, **kw: lr_factor(name, s, total=100, warmup=kw.get("w", 0),  # noqa: E731
                                        steps_per_epoch=10, step_size=3, gamma=0.5)
    assert f("constant", 50) == 1.0
    assert f("cosine", 0) == pytest.approx(1.0) and f("cosine", 100) == pytest.approx(0.0)
    assert f("cosine", 50) == pytest.approx(0.5)
    assert f("step", 29) == 1.0 and f("step", 30) == 0.5 and f("step", 60) == 0.25
    peak = max(range(100), key=lambda s: f("one_cycle", s))
    assert 25 <= peak <= 35 and f("one_cycle", 0) < 0.1 and f("one_cycle", 100) < 1e-3
    assert f("cosine", 0, w=10) == pytest.approx(0.1) and f("cosine", 9, w=10) == 1.0
    assert f("cosine", 10, w=10) == pytest.approx(1.0)


def test_scheduler_drives_param_group_lrs_with_their_own_scale() -> None:
    w1, w2 = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = build_optimizer("sgd", [{"params": [w1], "lr": 1.0}, {"params": [w2], "lr": 0.1}], 1.0)
    sched = build_scheduler(opt, "cosine", total=10, warmup=0, steps_per_epoch=5)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(0.05)


def test_cross_entropy_smoothing_weights_and_soft_targets() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce = float(F.cross_entropy(logits, y))
    assert build_loss("cross_entropy")(logits, y) == pytest.approx(ce)
    smooth = build_loss("cross_entropy", label_smoothing=0.1)(logits, y)
    assert smooth != pytest.approx(float(F.cross_entropy(logits, y)))
    soft = F.one_hot(y, 3).float()
    assert build_loss("cross_entropy")(logits, soft) == pytest.approx(
        float(F.cross_entropy(logits, y)), rel=1e-5)


def test_focal_reduces_to_ce_at_gamma_zero_and_downweights_easy() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    ce = float(F.cross_entropy(logits, y))
    assert build_loss("focal", focal_gamma=0.0)(logits, y) == pytest.approx(ce, rel=1e-5)
    assert float(build_loss("focal", focal_gamma=2.0)(logits, y)) < ce


def test_auto_class_weights_are_inverse_frequency() -> None:
    w = auto_class_weights([0, 0, 0, 1], 2)
    assert w[1] / w[0] == pytest.approx(3.0) and float(w.mean()) == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "expected"), [("mse", 4.0), ("l1", 2.0), ("huber", 1.5)])
def test_regression_losses(name: str, expected: float) -> None:
    out, y = torch.tensor([[2.0], [2.0]]), torch.tensor([0.0, 4.0])
    assert float(build_loss(name)(out, y)) == pytest.approx(expected)
    assert math.isfinite(expected)
