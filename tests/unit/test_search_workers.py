"""Search workers sharing one study: they never evaluate the same parameters twice, and a serial
study with the same seed draws the same trials.

Each simulated worker opens the study from its own storage handle with its own sampler, built
exactly as ``graftkit.search.worker`` builds it (``open_study``), and the workers' trials
interleave: every worker asks for a trial before any of them reports. No model is trained.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import optuna
import pytest

from graftkit.search.space import DEFAULT_SPACE, load_space, parse_space
from graftkit.search.storage import open_storage
from graftkit.search.study import (
    Duplicate,
    SearchSettings,
    counted,
    make_objective,
    open_study,
)

IMAGE = {"data.modality": "image"}


def fake_value(params: dict) -> float:
    """A stand-in for training: a smooth function of the parameters (for TPE to model)."""
    lr = params.get("optim.lr", 1e-3)
    return 1.0 - abs(math.log10(lr) + 3.0) / 5 + 0.01 * params.get("train.epochs", 0)


def run(tmp: Path, sampler: str, workers: int, rounds: int, space=None, seed: int = 0
        ) -> list[optuna.trial.FrozenTrial]:
    """``rounds`` rounds of ``workers`` interleaved trials on a journal file in ``tmp``."""
    space = space or load_space(DEFAULT_SPACE)
    s = SearchSettings(data="unused", study="s", sampler=sampler, seed=seed)
    open_study(s, open_storage(None, tmp), space, create=True)
    studies = [open_study(s, open_storage(None, tmp), space, create=False)
               for _ in range(workers)]
    for _ in range(rounds):
        asked = []
        for st in studies:
            t = st.ask()
            config = {} if t.user_attrs.get("graft_default") else space.sample(t, IMAGE)
            t.set_user_attr("config", config)
            asked.append((st, t, config))
        for st, t, config in asked:
            st.tell(t, fake_value(config))
    return studies[0].get_trials(deepcopy=False)


def draws(trials) -> list[str]:
    return [json.dumps(t.params, sort_keys=True) for t in trials]


@pytest.mark.parametrize("sampler, workers", [("tpe", 2), ("tpe", 3), ("random", 3)])
def test_workers_never_draw_the_same_parameters(tmp_path: Path, sampler: str,
                                                workers: int) -> None:
    # 2 x 5 or 3 x 4 trials: TPE's 6 start-up (random) trials and then its model
    trials = run(tmp_path, sampler, workers, rounds=5 if workers == 2 else 4)
    sampled = [t for t in trials if not t.user_attrs.get("graft_default")]
    assert len(sampled) == len(trials) - 1
    assert len(set(draws(sampled))) == len(sampled), draws(sampled)
    # and no two trials have the same config either (what the objective compares)
    configs = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials]
    assert len(set(configs)) == len(configs)


def test_grid_workers_take_distinct_points(tmp_path: Path) -> None:
    space = parse_space({"strategy.name": {"choices": ["linear_probe", "full"]},
                         "train.epochs": {"low": 2, "high": 5}})
    # 3 workers x 2 rounds: graft's default, then 5 of the 8 points (all 8 would end the study,
    # which Optuna's grid sampler does from inside an optimize loop only)
    trials = run(tmp_path, "grid", 3, rounds=2, space=space)
    grid = draws(trials[1:])
    assert len(grid) == 5 and len(set(grid)) == 5, grid


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_serial_study_with_the_same_seed_draws_the_same_trials(tmp_path: Path,
                                                                  sampler: str) -> None:
    a = draws(run(tmp_path / "a", sampler, 1, rounds=9))
    b = draws(run(tmp_path / "b", sampler, 1, rounds=9))
    c = draws(run(tmp_path / "c", sampler, 1, rounds=9, seed=1))
    assert a == b and len(a) == 9
    assert a[1:] != c[1:]  # trial 0 is graft's default in both


def test_the_random_sampler_draws_trial_n_alike_however_many_workers(tmp_path: Path) -> None:
    serial = draws(run(tmp_path / "serial", "random", 1, rounds=6))
    parallel = draws(run(tmp_path / "parallel", "random", 3, rounds=2))
    assert serial == parallel


def fake_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, space: dict):
    """The real objective on a tiny dataset, with training replaced: it records each trained
    learning rate and runs ``during`` (another worker's work) while it "trains"."""
    import graftkit.launch as launch
    from tests.conftest import shared_dataset

    trained: list[float] = []
    during: list = []

    class FakeRun:
        meta = {"best_value": 0.9, "best_epoch": 1}

    def fake_train(cfg, out=None, **kw):  # noqa: ANN001, ANN003, ANN202
        trained.append(cfg.optim.lr)
        while during:
            during.pop(0)()
        return FakeRun()

    monkeypatch.setattr(launch, "train", fake_train)
    s = SearchSettings(data=str(shared_dataset("hymenoptera_256")), study="t",
                       sampler="random", default_trial=False)
    sp = parse_space(space)
    objective = make_objective(s, sp, tmp_path, None)
    open_study(s, open_storage(None, tmp_path), sp, create=True)
    return s, sp, objective, trained, during


def test_a_trial_drawing_a_config_already_trained_or_training_is_not_trained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.search.results import leaderboard

    s, sp, objective, trained, during = fake_search(tmp_path, monkeypatch,
                                                    {"optim.lr": {"choices": [0.001]}})
    a, b = (open_study(s, open_storage(None, tmp_path), sp, create=False) for _ in range(2))

    def second_worker() -> None:  # asks while worker a trains trial 0 on the only config
        t = b.ask()
        with pytest.raises(Duplicate, match="trial 0"):
            objective(t)
        b.tell(t, state=optuna.trial.TrialState.FAIL)

    during.append(second_worker)
    first = a.ask()
    assert objective(first) == 0.9
    a.tell(first, 0.9)
    second_worker()  # and once it has finished
    assert trained == [0.001]  # trained once
    assert counted(a) == 1  # duplicates cost nothing and do not count towards --trials
    rows = leaderboard(a, sp)
    assert [(r["trial"], r["state"]) for r in rows] == [(0, "complete"), (1, "duplicate"),
                                                         (2, "duplicate")]
    assert rows[1]["note"] == "same parameters as trial 0: not trained"
    assert a.trials[1].user_attrs["duplicate_of"] == 0


def test_of_two_trials_drawing_alike_at_once_the_first_trains() -> None:
    from graftkit.search.sampling import duplicate_of

    study = optuna.create_study()
    one, two = study.ask(), study.ask()
    for t in (one, two):
        t.set_user_attr("config", {"optim.lr": 0.001})
    trials = study.get_trials(deepcopy=False)
    assert duplicate_of(trials, one.number, {"optim.lr": 0.001}) is None
    assert duplicate_of(trials, two.number, {"optim.lr": 0.001}) == one.number
    assert duplicate_of(trials, two.number, {"optim.lr": 0.01}) is None


def test_a_retry_of_a_dead_workers_trial_is_trained_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, sp, objective, trained, _ = fake_search(tmp_path, monkeypatch,
                                               {"optim.lr": {"choices": [0.001, 0.01]}})
    study = open_study(s, open_storage(None, tmp_path), sp, create=False)
    lost = study.ask()
    sp.sample(lost, {})
    lost.set_user_attr("config", {"optim.lr": lost.params["optim.lr"]})
    study.tell(lost, state=optuna.trial.TrialState.FAIL)  # as requeue_dead leaves it
    study.enqueue_trial(lost.params, user_attrs={"retry_of": lost.number})
    assert objective(study.ask()) == 0.9
    assert trained == [lost.params["optim.lr"]]


def test_a_space_smaller_than_the_budget_stops_instead_of_drawing_duplicates_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``optimize`` itself (one worker, in this process): one config, a budget of 3. The config
    trains once; the duplicates that follow cost nothing, print no traceback, and stop the
    worker after 10."""
    from graftkit.search.study import SPACE, optimize

    space = {"optim.lr": {"choices": [0.001]}}
    s, sp, _, trained, _ = fake_search(tmp_path, monkeypatch, space)
    s.trials = 3
    (tmp_path / SPACE).write_text(sp.to_yaml())
    monkeypatch.setattr("gc.collect", lambda *a: 0)  # after each trial: 0.4 s with torch loaded
    warned: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warned.append  # type: ignore[method-assign]
    optuna_log = logging.getLogger("optuna.study._optimize")  # its warning for a failed trial
    optuna_log.addHandler(handler)
    try:
        optimize(s, tmp_path, None, None, quiet=True)
    finally:
        optuna_log.removeHandler(handler)
    trials = optuna.load_study(study_name="t", storage=open_storage(None, tmp_path)).trials
    assert trained == [0.001] and len(trials) == 11
    assert [t.user_attrs.get("duplicate_of") for t in trials[1:]] == [0] * 10
    assert counted(optuna.load_study(study_name="t", storage=open_storage(None, tmp_path))) == 1
    assert not [r for r in warned if r.levelno >= logging.WARNING], warned
