"""The search space: parsing, conditional sampling, validation, grid, lr-find's suggestion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from graftkit.cli.search import parse_duration
from graftkit.errors import ConfigError
from graftkit.search.lr_find import suggest
from graftkit.search.space import DEFAULT_SPACE, load_space, parse_space

SPACE = {
    "strategy.name": {"choices": ["linear_probe", "full"]},
    "optim.lr": [{"when": {"strategy.name": "linear_probe"}, "low": 1e-3, "high": 3e-2,
                  "log": True},
                 {"when": {"strategy.name": "full"}, "low": 1e-5, "high": 1e-3, "log": True}],
    "train.epochs": {"low": 2, "high": 5},
    "strategy.n_blocks": {"when": {"strategy.name": "last_n"}, "low": 1, "high": 3},
    "model.dropout": {"value": 0.1},
}


def sample_many(space, n=60, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(space.sample(t, {}))
        study.tell(t, 0.0)
    return out


def test_conditional_variants_sample_in_their_own_ranges() -> None:
    samples = sample_many(parse_space(SPACE))
    for s in samples:
        lo, hi = (1e-3, 3e-2) if s["strategy.name"] == "linear_probe" else (1e-5, 1e-3)
        assert lo <= s["optim.lr"] <= hi
        assert isinstance(s["train.epochs"], int) and 2 <= s["train.epochs"] <= 5
        assert "strategy.n_blocks" not in s  # its condition never holds
        assert s["model.dropout"] == 0.1
    assert {s["strategy.name"] for s in samples} == {"linear_probe", "full"}


def test_the_same_seed_samples_the_same_trials() -> None:
    space = parse_space(SPACE)
    assert sample_many(space, 10, seed=3) == sample_many(space, 10, seed=3)
    assert sample_many(space, 10, seed=3) != sample_many(space, 10, seed=4)


def test_the_shipped_space_parses_and_round_trips() -> None:
    space = load_space(DEFAULT_SPACE)
    assert "strategy.name" in space.keys() and "optim.lr" in space.keys()
    again = parse_space(__import__("yaml").safe_load(space.to_yaml()))
    assert [(v.key, v.name, v.when, v.low, v.high, v.choices) for v in again.variants] == [
        (v.key, v.name, v.when, v.low, v.high, v.choices) for v in space.variants]


@pytest.mark.parametrize("tree, message", [
    ({"optim.lrr": {"low": 1, "high": 2}}, "not a config key"),
    ({"optim.lr": {"low": 1e-2, "high": 1e-4, "log": True}}, "low < high"),
    ({"optim.lr": {"low": 0.0, "high": 1e-2, "log": True}}, "low > 0"),
    ({"optim.lr": {"low": "a", "high": 1e-2}}, "numbers"),
    ({"optim.lr": {"choices": []}}, "non-empty"),
    ({"optim.lr": {"lo": 1e-3}}, "unknown field"),
    ({"train.epochs": {"when": {"strategy.name": "full"}, "low": 1, "high": 3},
      "strategy.name": {"choices": ["full"]}}, "must come before"),
    ([], "mapping"),
])
def test_bad_spaces_name_the_key(tree, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(tree)


def test_grid_needs_discrete_values() -> None:
    space = parse_space({"strategy.name": {"choices": ["a", "b"]}, "train.epochs":
                         {"low": 1, "high": 3}, "optim.lr": {"grid": [1e-3, 1e-2], "low": 1e-3,
                                                             "high": 1e-2, "log": True}})
    assert space.grid() == {"strategy.name": ["a", "b"], "train.epochs": [1, 2, 3],
                            "optim.lr": [1e-3, 1e-2]}
    with pytest.raises(ConfigError, match="grid"):
        parse_space({"optim.lr": {"low": 1e-3, "high": 1e-2}}).grid()


def test_recentre_keeps_the_width_of_a_log_range() -> None:
    v = parse_space({"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}).variants[0]
    v.recentre(3e-3)
    assert v.low * v.high == pytest.approx(3e-3 ** 2) and v.high / v.low == pytest.approx(100)


def test_lr_find_suggestion_is_the_steepest_descent_before_the_minimum() -> None:
    lrs = list(np.logspace(-7, 0, 100))
    # a loss that falls fastest around 1e-3 and blows up past 1e-1
    loss = [1 / (1 + math.exp(2 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr) + 1) * 3
            for lr in lrs]
    steep, at_min = suggest(lrs, loss)
    assert 5e-4 < steep < 2e-3 and 1e-2 < at_min <= 1e-1 + 1e-9


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90),
                                           ("900", 900), ("2h", 7200)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ConfigError, match="time-budget"):
        parse_duration("soon")


@pytest.mark.parametrize("modality, allowed, banned", [
    ("image", {"linear_probe", "last_n", "lp_ft", "full"}, {"lora"}),
    ("text", {"linear_probe", "lora", "full"}, {"last_n", "lp_ft"}),
])
def test_the_shipped_space_fits_the_modality(modality, allowed, banned) -> None:
    space = load_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(80):
        t = study.ask()
        s = space.sample(t, {"data.modality": modality})
        study.tell(t, 0.0)
        seen.add(s["strategy.name"])
        tuned = modality == "image" and s["strategy.name"] in ("last_n", "full")
        assert ("train.augment" in s) == tuned
        assert ("strategy.lora_r" in s) == (s["strategy.name"] == "lora")
    assert seen == allowed and not seen & banned


def test_out_of_memory_retries_once_at_half_the_batch(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """A CUDA OOM in a trial retries it at half the batch size; a second one fails the trial
    with its reason (no GPU needed: the training call is replaced)."""
    import graftkit.launch as launch
    from graftkit.search.study import SearchSettings, TrialFailed, make_objective
    from tests.conftest import shared_dataset

    calls: list[int] = []

    class FakeRun:
        meta = {"best_value": 0.9, "best_epoch": 1}

    def fake_train(cfg, out=None, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(cfg.data.batch_size)
        if len(calls) == 1 or fail_twice:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return FakeRun()

    monkeypatch.setattr(launch, "train", fake_train)
    s = SearchSettings(data=str(shared_dataset("hymenoptera_256")), study="t",
                       overrides={"data.batch_size": 32})
    objective = make_objective(s, parse_space({"optim.lr": {"value": 1e-3}}), tmp_path, None)
    study = optuna.create_study(direction="maximize")
    fail_twice = False
    trial = study.ask()
    assert objective(trial) == 0.9 and calls == [32, 16]
    assert "batch size 16" in trial.user_attrs["note"]
    calls.clear()
    fail_twice = True
    trial = optuna.create_study(direction="maximize").ask()  # the same config in the same
    # study would not be trained again (a duplicate)
    with pytest.raises(TrialFailed, match="out of memory"):
        objective(trial)
    assert calls == [32, 16] and "out of memory" in trial.user_attrs["error"]


def test_prune_hook_spares_head_only_epochs() -> None:
    from graftkit.search.study import Pruned, PruneHook

    class Trial:
        reported: list = []

        def report(self, value, step):  # noqa: ANN001, ANN201
            self.reported.append((step, value))

        def should_prune(self):  # noqa: ANN201
            return True

    hook = PruneHook(Trial(), "accuracy")
    hook.on_epoch_end(None, {"epoch": 1, "val_accuracy": 0.5, "unfrozen_blocks": 0})
    with pytest.raises(Pruned):
        hook.on_epoch_end(None, {"epoch": 2, "val_accuracy": 0.6, "unfrozen_blocks": 3})
    assert Trial.reported == [(1, 0.5), (2, 0.6)]


def test_a_search_keeps_its_files_as_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    """search.json and the trials keep absolute paths, so a search resumed from another folder
    finds the same data (a relative one failed there)."""
    from graftkit.search.settings import SearchSettings
    from graftkit.search.study import _absolute

    (tmp_path / "photos").mkdir()
    (tmp_path / "val.csv").write_text("path,label\n")
    monkeypatch.chdir(tmp_path)
    s = SearchSettings(data="photos", study="s", overrides={"data.val": "val.csv",
                                                           "optim.lr": "0.1",
                                                           "data.test": "missing.csv"})
    _absolute(s)
    assert s.data == str(tmp_path / "photos") and s.overrides["data.val"] == str(
        tmp_path / "val.csv")
    assert s.overrides["optim.lr"] == "0.1" and s.overrides["data.test"] == "missing.csv"
