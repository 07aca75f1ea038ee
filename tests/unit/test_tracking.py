"""The trackers on their own: a resumed run continues the same MLflow run and TensorBoard
folder, a tracker failing mid-run is dropped with one warning, a missing library is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graftkit.errors import ConfigError
from graftkit.train import tracking

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def _start(tmp_path: Path, resume=None, next_step=1, warnings=None):
    return tracking.start(
        ["mlflow", "tensorboard"], tmp_path / "run", uri=f"sqlite:///{tmp_path / 'db.sqlite'}",
        experiment="unit", run_name="r", config={"optim": {"lr": 0.1}, "task": "x"},
        config_yaml="optim:\n  lr: 0.1\n", tags={"graft.model": "m"}, resume=resume,
        next_step=next_step, warn=(warnings if warnings is not None else []).append)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a sqlite tracking URI keeps artifacts in ./mlruns: the working folder, not the checkout
    monkeypatch.chdir(tmp_path)


def test_resume_continues_the_same_runs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = _start(tmp_path)
    for epoch in (1, 2):
        t.on_epoch_end(None, {"epoch": epoch, "stage_epoch": epoch, "val_accuracy": epoch / 10,
                              "best": True, "stage": "full"})
    ids = t.ids()
    t.end("interrupted")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'db.sqlite'}")
    run_id = ids["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(run_id).data.params == {"optim.lr": "0.1", "task": "x"}

    # resumed from another folder with no tracking.uri set: the run's saved uri is used
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    t = tracking.start(["mlflow", "tensorboard"], tmp_path / "run", uri=None, experiment="unit",
                       run_name="r", config={}, config_yaml="", tags={}, resume=ids,
                       next_step=3, warn=[].append)
    assert t.ids() == ids and not list(elsewhere.iterdir())  # no stray mlflow.db here
    t.on_epoch_end(None, {"epoch": 3, "stage_epoch": 3, "val_accuracy": 0.3})
    t.final({"monitor": "accuracy", "val": {"accuracy": 0.3, "n": 6}},
            [(tmp_path / "run" / "tensorboard", None)], tmp_path / "run")
    t.end("completed")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    hist = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, m.value) for m in hist] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.data.metrics["final/val_accuracy"] == 0.3
    assert run.data.metrics["final/val_n"] == 6
    assert "best" not in run.data.metrics and "epoch" not in run.data.metrics
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("val_accuracy")] == [
        (1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    t = _start(tmp_path, warnings=warnings)
    mlflow_tracker = next(x for x in t.trackers if x.name == "mlflow")

    def down(*a, **k):
        raise ConnectionError("server went away")

    mlflow_tracker.metrics = down
    for epoch in (1, 2):
        t.on_epoch_end(None, {"epoch": epoch, "val_accuracy": 0.5})
    assert [x.name for x in t.trackers] == ["tensorboard"]
    assert warnings == ["tracking: mlflow failed (ConnectionError: server went away); "
                        "training goes on without it"]
    t.end("completed")


def test_a_missing_library_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"tensorboard is not installed; pip install "
                       r"'graftkit\[track\]'"):
        tracking.check(["tensorboard"])
