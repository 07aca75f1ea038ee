"""Semi-supervised parts: pseudo-label selection, shots, pools, prototypes, the FixMatch step,
the text strong view, and the config checks that come before any heavy work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from graftkit.config import build_config
from graftkit.data.sources import discover_pool
from graftkit.data.spec import take_shots
from graftkit.data.text import perturb_words
from graftkit.data.text_sources import discover_text_pool
from graftkit.errors import ConfigError, DataError
from graftkit.launch import validate
from graftkit.models.base import CosineLinear, HeadedAdapter, restore_head
from graftkit.session import plan_stages
from graftkit.strategies import STRATEGIES
from graftkit.strategies.prototype import SCALE, solve
from graftkit.train.semi import RoundStore, SemiSettings, choose, select
from graftkit.train.settings import LoopSettings
from graftkit.train.step import fixmatch_step, train_step


def test_select_takes_confident_predictions_and_keeps_the_class_balance() -> None:
    probs = torch.tensor([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.96, 0.04],
                          [0.02, 0.98], [0.6, 0.4], [0.1, 0.9], [0.03, 0.97]])
    idx, lab = select(probs, 0.95, torch.tensor([0.5, 0.5]), 1.0, balance=False)
    assert idx.tolist() == [0, 1, 2, 3, 4, 7] and lab.tolist() == [0, 0, 0, 0, 1, 1]
    # balanced: class 1 fills 2 of its quota of 4, so class 0 may fill only as much (its two
    # most confident), whatever it has to offer
    idx, lab = select(probs, 0.95, torch.tensor([0.5, 0.5]), 1.0, balance=True)
    assert idx.tolist() == [0, 1, 4, 7] and lab.tolist() == [0, 0, 1, 1]
    # a quarter of the pool in this round: one each
    idx, lab = select(probs, 0.95, torch.tensor([0.5, 0.5]), 0.25, balance=True)
    assert idx.tolist() == [0, 4]
    # the quota follows the labeled class prior
    idx, lab = select(probs, 0.5, torch.tensor([0.75, 0.25]), 1.0, balance=True)
    assert lab.tolist().count(0) == 5 and lab.tolist().count(1) == 1  # 5/6 of 6 and of 2
    # one class with nothing confident: nothing is accepted (no class takes over the pool)
    assert len(select(probs, 0.985, torch.tensor([0.5, 0.5]), 1.0, True)[0]) == 0
    assert len(select(probs, 0.999, torch.tensor([0.5, 0.5]), 1.0, False)[0]) == 0


def test_choose_reports_precision_on_hidden_labels_and_on_val() -> None:
    torch.manual_seed(0)
    classes = ["a", "b"]
    # logits that are confidently right for the first 8 pool items and wrong for the last 2
    pool = torch.tensor([[6.0, -6.0]] * 4 + [[-6.0, 6.0]] * 4 + [[6.0, -6.0]] * 2)
    hidden = [0.0] * 4 + [1.0] * 4 + [1.0] * 2
    val = torch.tensor([[5.0, -5.0], [-5.0, 5.0], [4.0, -4.0], [-4.0, 4.0]])
    val_y = torch.tensor([0, 1, 0, 1])
    s = SemiSettings(threshold=0.9, rounds=1, balance=False)
    idx, labels, info = choose(pool, val, val_y, torch.tensor([0, 1]), classes, s, 1, hidden)
    assert info["accepted"] == 10 and info["pool"] == 10
    assert info["pool_precision"] == pytest.approx(0.8)
    assert info["accepted_per_class"] == {"a": 6, "b": 4}
    assert info["val_precision"] == 1.0 and info["val_accepted"] == 4
    assert "warning" not in info
    # nothing above the threshold: a warning, not an error
    flat = torch.zeros(10, 2)
    _, _, info = choose(flat, val, val_y, torch.tensor([0, 1]), classes, s, 1, hidden)
    assert info["accepted"] == 0 and "lower semi.threshold" in info["warning"]
    # pool inputs whose labels nobody knows (-1) do not count against the precision
    idx, labels, info = choose(pool, val, val_y, torch.tensor([0, 1]), classes, s, 1,
                               [0.0] * 4 + [1.0] * 4 + [-1.0] * 2)
    assert info["pool_precision"] == 1.0 and info["pool_precision_n"] == 8


def test_round_store_keeps_each_rounds_choice(tmp_path: Path) -> None:
    store = RoundStore(tmp_path)
    assert store.load(1) is None
    store.save(1, torch.tensor([3, 5]), torch.tensor([1, 0]), {"round": 1, "accepted": 2})
    store.save(2, torch.tensor([1]), torch.tensor([1]), {"round": 2, "accepted": 1})
    store.save(1, torch.tensor([3, 5]), torch.tensor([1, 0]), {"round": 1, "accepted": 2})
    idx, lab = store.load(1)
    assert idx.tolist() == [3, 5] and lab.tolist() == [1, 0]
    assert [r["round"] for r in store.records()] == [1, 2]


def test_take_shots_is_seeded_and_stratified() -> None:
    items = [(f"a{i}", 0.0) for i in range(10)] + [(f"b{i}", 1.0) for i in range(2)]
    kept, rest, short = take_shots(items, 3, seed=0)
    assert sorted(t for _, t in kept) == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert short == [1] and len(rest) == 7
    assert set(kept) | set(rest) == set(items) and not set(kept) & set(rest)
    assert take_shots(items, 3, seed=0)[0] == kept
    assert take_shots(items, 3, seed=1)[0] != kept


def test_discover_pool_skips_bad_files(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(pool / "sub" / f"{i}.png")
    (pool / "broken.jpg").write_bytes(b"not a jpeg")
    (pool / ".hidden.png").write_bytes(b"x")
    items, skipped = discover_pool(pool)
    assert len(items) == 3 and all(i.endswith(".png") for i in items)
    assert [Path(s["path"]).name for s in skipped] == ["broken.jpg"]
    csv = tmp_path / "pool.csv"
    csv.write_text("path\nsub/0.png\n\nsub/1.png\n")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "0.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "1.png")
    assert len(discover_pool(csv)[0]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable images"):
        discover_pool(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        discover_pool(tmp_path / "nope")


def test_text_pools_from_csv_and_txt(tmp_path: Path) -> None:
    txt = tmp_path / "pool.txt"
    txt.write_text("first text\n\n  second one  \n")
    assert discover_text_pool(txt)[0] == ["first text", "second one"]
    csv = tmp_path / "pool.csv"
    csv.write_text("id,text\n1,hello there\n2,\n3,general kenobi\n")
    texts, skipped = discover_text_pool(csv)
    assert texts == ["hello there", "general kenobi"] and len(skipped) == 1
    with pytest.raises(DataError, match="folder"):
        discover_text_pool(tmp_path)


def test_perturb_words_drops_and_swaps_but_keeps_a_word() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    torch.manual_seed(0)
    a = perturb_words(text)
    torch.manual_seed(0)
    assert perturb_words(text) == a  # seeded by torch
    words = a.split()
    assert 20 < len(words) < 40 and set(words) <= set(text.split()) and a != text
    assert perturb_words("single") == "single"
    for _ in range(20):
        assert perturb_words("two words", drop=0.99).split()


class _Adapter(HeadedAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Identity()
        self.num_features = 4
        self.head = self._make_head(3, 0.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_prototype_head_is_the_nearest_class_mean_by_cosine() -> None:
    torch.manual_seed(0)
    centres = torch.eye(3, 4) * 5
    y = torch.arange(3).repeat_interleave(20)
    x = centres[y] * torch.rand(len(y), 1) * 3 + 0.3 * torch.randn(len(y), 4)
    model = _Adapter()
    STRATEGIES.get("prototype").prepare(model, None)
    assert isinstance(model.head[-1], CosineLinear) and model.head_kind == "cosine"
    solve(model.head, x, y)
    assert model.head[-1].weight.norm(dim=1).tolist() == pytest.approx([SCALE] * 3)
    # scale-free: a far-away input of class 1 is still class 1 (a linear head on raw features
    # would let the norm decide)
    test = torch.tensor([[0.0, 100.0, 1.0, 0.0], [0.2, 0.0, 3.0, 0.0]])
    with torch.no_grad():
        assert model(test).argmax(1).tolist() == [1, 2]
        assert (model(x).argmax(1) == y).float().mean() > 0.95
        cos = torch.nn.functional.cosine_similarity(test[:1], model.head[-1].weight)
        assert model(test[:1])[0].tolist() == pytest.approx((SCALE * cos).tolist(), abs=1e-4)
    # a rebuilt adapter gets the same head kind back (meta.json's model.head), same names
    plain = _Adapter()
    assert plain.state_dict().keys() == model.state_dict().keys()
    restore_head(plain, {"head": "cosine"}).load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(test), model(test))
    assert isinstance(restore_head(_Adapter(), {}).head[-1], torch.nn.Linear)


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def test_fixmatch_step_is_the_plain_step_when_nothing_is_confident() -> None:
    s = LoopSettings(task="classification", classes=["a", "b", "c"])
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    weak, strong = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    a = _tiny()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    plain, _ = train_step(a, a, x, y, loss_fn, s, opt, scaler)
    b = _tiny()
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    hidden = torch.full((8,), -1)
    loss, n, st = fixmatch_step(b, x, y, weak, strong, hidden, loss_fn, s, opt, scaler,
                                threshold=0.999, lambda_u=1.0)
    assert loss == pytest.approx(plain) and n == 4 and st["accepted"] == 0
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb)
    # a threshold every prediction passes: the strong view learns the weak view's argmax
    c = _tiny()
    with torch.no_grad():
        pseudo = c(weak).argmax(1)
        expected = loss_fn(c(x), y) + torch.nn.functional.cross_entropy(c(strong), pseudo)
    opt = torch.optim.SGD(c.parameters(), lr=0.1)
    loss, _, st = fixmatch_step(c, x, y, weak, strong, pseudo, loss_fn, s, opt, scaler,
                                threshold=1e-6, lambda_u=1.0)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert st["accepted"] == 8 and st["known"] == 8 and st["correct"] == 8


def _cfg(tmp_path: Path, **kw: object) -> object:
    return build_config(overrides={"data.path": str(tmp_path), **kw})


def test_plans_of_semi_supervised_runs(tmp_path: Path) -> None:
    probe = STRATEGIES.get("linear_probe")
    cfg = _cfg(tmp_path, **{"data.unlabeled": str(tmp_path), "semi.rounds": 2})
    stages = plan_stages(cfg, probe)
    assert [(st.name, st.pseudo_round) for st in stages] == [
        ("probe", 0), ("self-train 1", 1), ("self-train 2", 2)]
    stages = plan_stages(cfg.model_copy(update={"strategy": cfg.strategy.model_copy(
        update={"name": "lp_ft"})}), STRATEGIES.get("lp_ft"))
    assert [(st.name, st.pseudo_round, st.fixmatch) for st in stages] == [
        ("probe", 0, False), ("self-train 1", 1, False), ("self-train 2", 2, False),
        ("finetune", 3, False)]
    fm = _cfg(tmp_path, **{"data.unlabeled": str(tmp_path), "strategy.name": "lp_ft",
                           "semi.method": "fixmatch"})
    assert [(st.name, st.fixmatch) for st in plan_stages(fm, STRATEGIES.get("lp_ft"))] == [
        ("probe", False), ("finetune", True)]
    auto = _cfg(tmp_path, **{"data.unlabeled": str(tmp_path), "strategy.name": "full"})
    assert all(st.fixmatch for st in plan_stages(auto, STRATEGIES.get("full")))
    assert plan_stages(_cfg(tmp_path), probe)[0].pseudo_round == 0  # no pool: plain


@pytest.mark.parametrize("overrides, message", [
    ({"data.unlabeled_rest": True}, "give --shots K"),
    ({"semi.method": "fixmatch"}, "needs unlabeled data"),
    ({"data.shots": 2, "task": "regression"}, "for single-label classification"),
    ({"data.unlabeled": "/no/such/pool"}, "does not exist"),
    ({"data.unlabeled": "POOL", "semi.method": "fixmatch"}, "keeps it frozen"),
    ({"data.unlabeled": "POOL", "strategy.name": "full", "semi.method": "self_training"},
     "trains the backbone from the start"),
    ({"strategy.name": "prototype", "task": "regression"}, "is for single-label classification"),
    ({"strategy.name": "prototype", "data.unlabeled": "POOL", "train.augment": "light"},
     "takes no augmentation"),
    ({"data.unlabeled": "POOL", "strategy.name": "full", "train.mixup": 0.8},
     "FixMatch trains on its own weak and strong views, not with train.mixup"),
    ({"data.unlabeled": "POOL", "strategy.name": "full", "train.augment": "augmix_jsd"},
     "not with train.augment=augmix_jsd"),
])
def test_semi_supervised_config_mistakes_fail_early(tmp_path: Path, overrides: dict,
                                                    message: str) -> None:
    overrides = {k: (str(tmp_path) if v == "POOL" else v) for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(tmp_path, **overrides))


def test_semi_defaults() -> None:
    c = build_config()
    assert c.semi.threshold is None and c.semi.method == "auto" and c.semi.mu == 7
    assert c.data.shots is None and c.data.unlabeled is None and not c.data.unlabeled_rest
    assert math.isclose(c.semi.lambda_u, 1.0)


def test_fixmatch_distribution_alignment_stops_one_class_taking_every_pseudo_label() -> None:
    s = LoopSettings(task="classification", classes=["a", "b"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():  # the same prediction for every input: 0.9 for "a"
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([math.log(9.0), 0.0]))
    x, y = torch.randn(2, 1, 2, 2), torch.tensor([0, 1])
    weak = strong = torch.randn(8, 1, 2, 2)
    loss_fn, scaler = torch.nn.CrossEntropyLoss(), torch.amp.GradScaler("cpu", enabled=False)

    def accepted(prior: torch.Tensor | None) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        st = fixmatch_step(model, x, y, weak, strong, torch.full((8,), -1), loss_fn, s, opt,
                           scaler, threshold=0.6, lambda_u=1.0, prior=prior)[2]
        assert st["p_mean"].tolist() == pytest.approx([0.9, 0.1], abs=1e-5)
        return st["accepted"]

    assert accepted(None) == 8  # every input pseudo-labelled "a"
    assert accepted(torch.tensor([0.5, 0.5])) == 0  # aligned to the labels' balance: 0.5/0.5
