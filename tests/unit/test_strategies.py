"""Strategies decide which parameters train and at which learning rates; check the real effect."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from graftkit.models.vision import create_model
from graftkit.strategies import ALL, STRATEGIES, StrategyParams
from graftkit.train.loop import augment_for, set_trainable, train_mode

TESTED = {"linear_probe", "last_n", "full", "lp_ft", "gradual", "lora", "prototype"}


def test_every_registered_strategy_is_tested() -> None:
    assert set(STRATEGIES.names()) == TESTED


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("test_efficientnet", 3, pretrained=False, dropout=0.1)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_linear_probe_trains_the_head_only(tiny) -> None:
    (stage,) = STRATEGIES.get("linear_probe").plan(4, 1e-3, StrategyParams())
    assert stage.head_only and augment_for(stage, "auto") == "none"
    set_trainable(tiny, stage.blocks_at(0))
    assert _trainable(tiny) == {"head.1.weight", "head.1.bias"}
    train_mode(tiny, 0)
    assert not tiny.backbone.training and tiny.head.training


def test_prototype_is_one_closed_form_head_only_stage_on_a_cosine_head(tiny) -> None:
    strat = STRATEGIES.get("prototype")
    (stage,) = strat.plan(30, 1e-3, StrategyParams())
    assert stage.head_only and stage.solve is not None and stage.epochs == 1
    strat.prepare(tiny, StrategyParams())
    assert tiny.head_kind == "cosine" and {n for n, _ in tiny.head.named_parameters()} == {
        "1.weight", "1.bias"}
    assert strat.classification_only


def test_last_n_unfreezes_exactly_the_last_blocks_and_keeps_frozen_bn_in_eval(tiny) -> None:
    (stage,) = STRATEGIES.get("last_n").plan(3, 1e-3, StrategyParams(n_blocks=2))
    blocks = tiny.blocks()
    set_trainable(tiny, stage.blocks_at(0))
    expected = set(blocks[-1]) | set(blocks[-2]) | {"head.1.weight", "head.1.bias"}
    assert _trainable(tiny) == expected
    train_mode(tiny, 2)
    bns = [(n, m) for n, m in tiny.backbone.named_modules() if isinstance(m, _BatchNorm)]
    frozen = [m for n, m in bns if not m.weight.requires_grad]
    live = [m for n, m in bns if m.weight.requires_grad]
    assert frozen and live
    assert all(not m.training for m in frozen) and all(m.training for m in live)
    # and frozen BN statistics really do not move in a forward pass
    before = [m.running_mean.clone() for m in frozen]
    tiny(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen))


def test_full_trains_everything(tiny) -> None:
    (stage,) = STRATEGIES.get("full").plan(3, 1e-3, StrategyParams())
    n = set_trainable(tiny, stage.blocks_at(0))
    assert n == sum(p.numel() for p in tiny.parameters()) and stage.blocks_at(0) == ALL
    assert augment_for(stage, "auto") == "light"


def test_lp_ft_is_a_probe_then_full_finetune() -> None:
    probe, ft = STRATEGIES.get("lp_ft").plan(4, 1e-5, StrategyParams(probe_epochs=7, probe_lr=1e-2))
    assert (probe.epochs, probe.lr, probe.head_only) == (7, 1e-2, True)
    assert (ft.epochs, ft.lr, ft.head_only, ft.blocks_at(0)) == (4, 1e-5, False, ALL)


def test_gradual_unfreezes_one_block_per_period(tiny) -> None:
    (stage,) = STRATEGIES.get("gradual").plan(6, 1e-3, StrategyParams(unfreeze_every=2))
    assert [stage.blocks_at(e) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    counts = [set_trainable(tiny, stage.blocks_at(e)) for e in range(6)]
    assert counts[0] < counts[2] < counts[4]


def test_layer_decay_scales_learning_rates_by_depth(tiny) -> None:
    set_trainable(tiny, ALL)
    groups = tiny.param_groups(lr=1.0, weight_decay=0.1, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(tiny.named_parameters())
    blocks = tiny.blocks()
    assert lr_of[id(params["head.1.weight"])] == 1.0
    top = params[[n for n in blocks[-1] if n.endswith("weight")][0]]
    bottom = params[[n for n in blocks[0] if n.endswith("weight")][0]]
    assert lr_of[id(top)] == 0.5
    assert lr_of[id(bottom)] == pytest.approx(0.5 ** len(blocks))
    assert wd_of[id(params["head.1.bias"])] == 0.0 and wd_of[id(params["head.1.weight"])] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_lora_trains_the_adapters_and_the_head_only() -> None:
    from graftkit.models.text import apply_lora, create_text_model

    model = create_text_model("paraphrase-MiniLM-L3-v2", 2, pretrained=False)
    apply_lora(model)
    (stage,) = STRATEGIES.get("lora").plan(2, 5e-4, StrategyParams())
    n = set_trainable(model, stage.blocks_at(0))
    names = _trainable(model)
    assert names and all("lora_" in k or k.startswith("head.") for k in names)
    assert n <= 0.05 * sum(p.numel() for p in model.parameters())


def test_full_defaults_to_fewer_epochs_on_text_models() -> None:
    from graftkit.config import Config
    from graftkit.session import plan_stages

    def epochs(modality: str, **train) -> int:
        cfg = Config.model_validate({"data": {"modality": modality}, "strategy": {"name": "full"},
                                     "train": train})
        return sum(s.epochs for s in plan_stages(cfg, STRATEGIES.get(cfg.strategy.name)))

    assert (epochs("image"), epochs("text"), epochs("text", epochs=7)) == (10, 3, 7)
    assert STRATEGIES.get("lora").epochs_for("text") == 5
