"""graft search and lr-find, end to end on real data with a tiny local network.

The PostgreSQL test needs a server: ``.ci/run`` starts Debian's postgresql on loopback and sets
``GRAFT_TEST_POSTGRES``; with ``GRAFT_REQUIRE_POSTGRES=1`` a missing server fails the test
instead of skipping it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import shared_dataset
from tests.integration.conftest import graft

pytestmark = pytest.mark.integration

TINY = ["model.name=test_efficientnet", "model.pretrained=false", "model.image_size=64",
        "train.threads=1"]
SPACE = """
strategy.name: {choices: [linear_probe, full]}
optim.lr:
  - {when: {strategy.name: linear_probe}, low: 1.0e-3, high: 3.0e-2, log: true}
  - {when: {strategy.name: full}, low: 1.0e-4, high: 3.0e-3, log: true}
train.epochs: {low: 2, high: 3}
model.dropout: {low: 0.0, high: 0.5}
"""


def leaderboard(search: Path) -> list[dict[str, str]]:
    with (search / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def _optuna_trials(storage, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def data() -> Path:
    return shared_dataset("hymenoptera_256")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("space") / "space.yaml"
    p.write_text(SPACE)
    return p


def test_search_leaves_a_leaderboard_a_usable_best_run_plots_and_a_summary(
        data: Path, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = graft("search", "--data", data, "--space", space, "--trials", "4", "--out", out,
                 *TINY)
    assert proc.stdout.strip().endswith(str(out / "best"))
    rows = leaderboard(out)
    assert sorted(int(r["trial"]) for r in rows) == list(range(4))
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    assert rows[0]["state"] == "complete"
    # trial 0 is graft's default configuration, so the search is never worse than not searching
    default = next(r for r in rows if r["trial"] == "0")
    assert "graft default" in default["note"]
    best_value = float(rows[0]["accuracy"])
    assert best_value >= float(default["accuracy"])
    result = json.loads((out / "result.json").read_text())
    assert result["best_value"] == pytest.approx(best_value)
    assert result["default_value"] == pytest.approx(float(default["accuracy"]))
    # best/ is an ordinary run: its metrics agree with the leaderboard, predict reads it
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["best_value"] == pytest.approx(best_value)
    assert json.loads((out / "best" / "search_trial.json").read_text())["trial"] == int(
        rows[0]["trial"])
    img = next((data / "val" / "bees").glob("*.jpg"))
    pred = json.loads(graft("predict", out / "best", img, "--json").stdout)
    assert pred[0]["top"][0]["label"] in {"ants", "bees"}
    assert list((out / "best" / "eval").glob("*/report.html"))
    # other trials keep their history and metrics, not their weights
    others = [out / "trials" / f"{int(r['trial']):04d}" for r in rows[1:]]
    assert all((d / "history.jsonl").is_file() for d in others)
    assert not any((d / "model.safetensors").exists() for d in others)
    assert not any((d / "checkpoints" / "last.safetensors").exists() for d in others)
    assert (out / "trials" / f"{int(rows[0]['trial']):04d}" / "model.safetensors").is_file()
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "plots" / "optimization_history.png").stat().st_size > 1000
    html = (out / "summary.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 and 'id="leaderboard"' in html
    assert html.count("<tr class=") == 4
    # --resume: the same study goes on to 5 trials, numbers unique
    graft("search", "--resume", out, "--trials", "5", "-q")
    rows = leaderboard(out)
    assert sorted(int(r["trial"]) for r in rows) == list(range(5))


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(
        data: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    # An absurd learning rate makes the loss blow up: that trial fails, the others finish.
    space.write_text("strategy.name: {choices: [linear_probe]}\n"
                     "optim.lr: {choices: [0.003, 1.0e+12]}\ntrain.epochs: {value: 2}\n")
    out = tmp_path / "s"
    graft("search", "--data", data, "--space", space, "--trials", "4", "--sampler", "grid",
          "--no-default-trial", "--pruner", "none", "--out", out, "-q", *TINY)
    rows = leaderboard(out)
    failed = [r for r in rows if r["state"] == "fail"]
    assert failed and all("TrainingDiverged" in r["note"] for r in failed), rows
    assert all(float(r["optim.lr"]) > 1 for r in failed)
    assert any(r["state"] == "complete" for r in rows)


# Mistakes (bad spaces, budgets, --resume of nothing): tests/integration/test_bad_inputs.py


def test_two_local_workers_share_a_journal_file(data: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"  # whole-network trials: long enough for both to take some
    space.write_text("strategy.name: {choices: [full]}\n"
                     "optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}\ntrain.epochs: {value: 2}\n")
    out = tmp_path / "s"
    graft("search", "--data", data, "--space", space, "--trials", "4", "--workers", "2",
          "--no-default-trial", "--out", out, "-q", *TINY)
    rows = leaderboard(out)
    numbers = [int(r["trial"]) for r in rows]
    assert len(numbers) == len(set(numbers))  # no trial counted twice
    counted = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert 4 <= len(counted) <= 5  # a trial already running when the 4th ends may finish too
    statuses = {json.loads((Path(r["run_dir"]) / "meta.json").read_text())["status"]
                for r in counted if r["state"] == "complete"}
    assert statuses == {"completed"}
    trials = _optuna_trials(_journal(out), out.name)
    pids = {t.user_attrs["worker"] for t in trials}
    assert len(pids) == 2  # both processes ran trials
    # the workers share the study's seed, yet never draw the same parameters (each trial's
    # draw is seeded by its number), and none was skipped as a duplicate
    draws = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(draws)) == len(draws), draws
    assert all(r["state"] != "duplicate" for r in rows)


def _journal(out: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "journal.log")))


def test_lr_find_suggests_a_learning_rate_with_a_plot(data: Path, tmp_path: Path) -> None:
    proc = graft("lr-find", "--data", data, "--strategy", "linear_probe", "--steps", "60",
                 "--out", tmp_path / "lrf", "-q", *TINY)
    assert "suggested lr for linear_probe" in proc.stdout
    r = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert 1e-7 <= r["suggestion"] <= 1.0 and len(r["lrs"]) == len(r["losses"]) >= 10
    assert r["suggestion"] >= r["lrs"][len(r["lrs"]) // 10]  # past the initial noise
    assert r["lrs"] == sorted(r["lrs"])
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 1000


# --- PostgreSQL: two workers, one killed mid-trial ------------------------------------------

def _postgres_url() -> str:
    url = os.environ.get("GRAFT_TEST_POSTGRES")
    if not url:
        if os.environ.get("GRAFT_REQUIRE_POSTGRES") == "1":
            pytest.fail("GRAFT_REQUIRE_POSTGRES=1 but GRAFT_TEST_POSTGRES is not set")
        pytest.skip("no PostgreSQL server (set GRAFT_TEST_POSTGRES=postgresql://...)")
    return url


def _worker(*args: object, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "graftkit.cli.main", "search",
                             *map(str, args)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, COLUMNS="200"))


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_postgres_two_workers_one_killed_mid_trial(data: Path, tmp_path: Path) -> None:
    import optuna

    url = _postgres_url()
    name = f"graft-test-{uuid.uuid4().hex[:8]}"
    space = tmp_path / "space.yaml"
    space.write_text("strategy.name: {choices: [full]}\n"
                     "optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}\n"
                     "train.epochs: {value: 3}\n")
    n = 4
    a = _worker("--data", data, "--space", space, "--trials", n, "--study", name, "--storage",
                url, "--heartbeat", "1", "--pruner", "none", "--no-default-trial", "--out",
                tmp_path / "a", *TINY, log=tmp_path / "a.log")
    storage = optuna.storages.RDBStorage(url)
    try:
        _wait(lambda: name in optuna.get_all_study_names(storage), 120, "the study")
        b = _worker("--study", name, "--storage", url, "--heartbeat", "1", "--out",
                    tmp_path / "b", log=tmp_path / "b.log")

        def b_running() -> bool:
            return any(t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(
                f":{b.pid}") for t in _optuna_trials(storage, name))

        _wait(b_running, 180, "worker b to start a trial")
        time.sleep(1.0)  # mid-trial
        os.kill(b.pid, signal.SIGKILL)
        b.wait(10)
        killed = next(t for t in _optuna_trials(storage, name) if t.state.name == "RUNNING"
                      and t.user_attrs.get("worker", "").endswith(f":{b.pid}"))
        assert a.wait(300) == 0, (tmp_path / "a.log").read_text()
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                p.kill()
    trials = _optuna_trials(storage, name)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert n <= len(done) <= n + 1
    lost = next(t for t in trials if t.number == killed.number)
    assert lost.state.name == "FAIL"  # its heartbeat stopped
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == killed.params
    rows = leaderboard(tmp_path / "a")
    assert any("retry of trial" in r["note"] for r in rows)
    optuna.delete_study(study_name=name, storage=storage)


def test_the_robust_objective_adds_corruption_accuracy(data: Path, space: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "s"
    graft("search", "--data", data, "--space", space, "--trials", "2", "--objective", "robust",
          "--robust-weight", "0.5", "--robust-corruptions", "gaussian_noise", "--out", out, "-q",
          *TINY)
    rows = leaderboard(out)
    assert len(rows) == 2
    for r in rows:
        assert 0 <= float(r["mca"]) <= 1
        assert float(r["objective"]) == pytest.approx(float(r["clean"]) + 0.5 * float(r["mca"]))
    proc = graft("search", "--data", data, "--objective", "robust", "--metric", "log_loss",
                 "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "better lower" in proc.stderr


def test_a_greedy_soup_of_kept_trials_is_a_run_no_worse_than_the_best(
        small_csv: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    out = tmp_path / "s"
    # linear probes: the same frozen backbone and the same seeded head to start from
    graft("search", "--data", small_csv, "--space", space, "--trials", "2", "--out", out,
          "--no-default-trial", "--pruner", "none", "--keep-weights", "-q", *TINY,
          "strategy.name=linear_probe", "train.epochs=3")
    kept = sorted(p.parent.name for p in (out / "trials").glob("*/model.safetensors"))
    assert kept == ["0000", "0001"]  # --keep-weights: every finished trial's
    r = json.loads(graft("soup", out, "--json").stdout)
    soup = Path(r["out"])
    assert soup == out / "soup" and r["monitor"] == "accuracy"
    assert [t["trial"] for t in r["tried"]][0] == r["best_trial"] == r["ingredients"][0]
    # the soup of two is kept only if validation does not drop: never worse than the best
    assert len(r["tried"]) == 2 and r["val"] >= r["best_trial_val"]
    assert r["ingredients"] == [t["trial"] for t in r["tried"] if t["kept"]]
    values = [t["value"] for t in r["tried"]]
    assert values == sorted(values, reverse=True)  # best first
    # an ordinary run: its own metrics and calibration, a report, predict reads it
    meta = json.loads((soup / "meta.json").read_text())
    assert meta["soup"]["ingredients"] == r["ingredients"] and meta["status"] == "completed"
    assert meta["calibration"]["fitted_on"] == "val"
    metrics = json.loads((soup / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(r["val"])
    assert not (soup / "checkpoints").exists() and list((soup / "eval").glob("*/report.html"))
    import graftkit
    from graftkit.errors import GraftError
    from graftkit.search.soup import soup as cook

    img = sorted((shared_dataset("hymenoptera_256") / "val" / "bees").glob("*.jpg"))[0]
    assert graftkit.load_run(soup).predict(img)[0]["label"] in {"ants", "bees"}
    with pytest.raises(GraftError, match="--overwrite"):  # nothing is replaced silently
        cook(out)
    # a search that freed its trials' weights: the error says how to keep them
    for name in ("0000", "0001"):
        d = tmp_path / "freed" / "trials" / name
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"status": "completed", "best_value": 0.5,
                                                 "monitor": "accuracy"}))
    with pytest.raises(GraftError, match="search with --keep-weights"):
        cook(tmp_path / "freed")


def test_a_soup_of_a_regression_search_scores_in_the_targets_units(small_csv: Path,
                                                                   tmp_path: Path) -> None:
    """The soup starts from the best trial at that trial's own val score (RMSE in the targets'
    units, not the standardised outputs'), and a regression soup is written without a
    calibration."""
    rows = small_csv.read_text().splitlines()
    reg = tmp_path / "reg.csv"  # a target far from 0, as standardisation matters there
    reg.write_text("\n".join([rows[0]] + [f"{r.split(',')[0]},{100 + i % 7 / 3:.3f},"
                                          f"{r.split(',')[2]}" for i, r in
                                          enumerate(rows[1:])]) + "\n")
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    out = tmp_path / "s"
    graft("search", "--data", reg, "--space", space, "--trials", "2", "--out", out,
          "--no-default-trial", "--pruner", "none", "--keep-weights", "-q", *TINY,
          "task=regression", "strategy.name=linear_probe", "train.epochs=2")
    r = json.loads(graft("soup", out, "--json").stdout)
    assert r["monitor"] == "rmse"
    assert r["best_trial_val"] == pytest.approx(r["tried"][0]["value"], rel=1e-4)
    meta = json.loads((Path(r["out"]) / "meta.json").read_text())
    assert meta["status"] == "completed" and not list(out.glob(".soup*"))


def test_a_model_name_choice_trains_and_ranks_each_backbone(data: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"  # two backbones, each probed on its own cached features
    space.write_text("model.name: {choices: [test_efficientnet, mobilenetv2_050]}\n"
                     "strategy.name: {choices: [linear_probe]}\n"
                     "optim.lr: {value: 0.01}\ntrain.epochs: {value: 2}\n")
    out = tmp_path / "s"
    graft("search", "--data", data, "--space", space, "--trials", "2", "--sampler", "grid",
          "--no-default-trial", "--pruner", "none", "--out", out, "-q", *TINY)
    rows = leaderboard(out)
    assert sorted(r["model.name"] for r in rows) == ["mobilenetv2_050", "test_efficientnet"]
    for r in rows:
        meta = json.loads((Path(r["run_dir"]) / "meta.json").read_text())
        assert r["state"] == "complete" and meta["model"]["name"] == r["model.name"]
    assert float(rows[0]["accuracy"]) >= float(rows[1]["accuracy"])
    best = json.loads((out / "best" / "meta.json").read_text())
    assert best["model"]["name"] == rows[0]["model.name"]
