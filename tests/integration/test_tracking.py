"""Experiment tracking read back with the libraries' own readers: a real MLflow tracking server
on loopback (sqlite backend, artifacts served by it) over HTTP, and TensorBoard's event reader."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import TINY, graft

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path_factory.mktemp("mlflow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=store)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not come up in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_server_and_tensorboard_get_every_epoch(small_csv: Path, tmp_path: Path,
                                                       mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["train", "--data", small_csv, "--out", out, "--strategy", "full", "--epochs", "3",
            *TINY, "--track", "mlflow", "--track", "tensorboard", "--tracking-uri",
            mlflow_server, "tracking.experiment=graft-test"]
    graft(*args)
    meta = json.loads((out / "meta.json").read_text())
    run_id = meta["tracking"]["mlflow"]["run_id"]
    assert meta["tracking"]["mlflow"]["uri"] == mlflow_server
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3

    client = MlflowClient(tracking_uri=mlflow_server)  # over HTTP
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "graft-test"
    assert run.info.run_name == "run"
    assert run.data.params["strategy.name"] == "full"
    assert run.data.params["train.epochs"] == "3"
    assert run.data.tags["graft.run_dir"] == str(out.resolve())
    got = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in got] == [1, 2, 3]
    assert [m.value for m in got] == pytest.approx([h["val_accuracy"] for h in history])
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final/val_accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    assert "final/val_ece" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "config.yaml", "metrics.json", "meta.json", "eval"} <= names
    (report,) = (out / "eval").glob("*/report.html")
    where = f"eval/{report.parent.name}"
    assert f"{where}/report.html" in [a.path for a in client.list_artifacts(run_id, where)]
    local = client.download_artifacts(run_id, "model.safetensors", str(tmp_path))
    assert Path(local).read_bytes() == (out / "model.safetensors").read_bytes()

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("val_accuracy")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([h["val_accuracy"] for h in history])
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_search_trials_are_child_runs_of_the_study(small_csv: Path, tmp_path: Path,
                                                  mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    out = tmp_path / "s"
    graft("search", "--data", small_csv, "--space", space, "--trials", "2", "--out", out,
          "--track", "mlflow", "--tracking-uri", mlflow_server, "-q", "--pruner", "none",
          "--no-default-trial",
          "model.name=test_efficientnet", "model.pretrained=false", "model.image_size=64",
          "train.threads=1", "strategy.name=linear_probe", "train.epochs=2",
          "tracking.experiment=graft-search")
    result = json.loads((out / "result.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("graft-search")
    runs = client.search_runs([exp.experiment_id])
    (study,) = [r for r in runs if r.data.tags.get("graft.kind") == "search"]
    assert study.info.status == "FINISHED" and study.info.run_name == "s"
    assert study.data.metrics["best_value"] == pytest.approx(result["best_value"])
    assert study.data.metrics["trials_complete"] == 2
    assert "leaderboard.csv" in {a.path for a in client.list_artifacts(study.info.run_id)}
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:  # each trial's run: its sampled lr, every epoch, its run directory
        run_dir = Path(t.data.tags["graft.run_dir"])
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["tracking"]["mlflow"]["run_id"] == t.info.run_id
        assert len(client.get_metric_history(t.info.run_id, "val_accuracy")) == 2
    assert sorted(float(t.data.params["optim.lr"]) for t in trials) == pytest.approx(
        sorted(float(r["optim.lr"]) for r in _leaderboard(out)), rel=1e-3)


def _leaderboard(search: Path) -> list[dict[str, str]]:
    import csv

    with (search / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_tracker_that_cannot_start_is_one_line(small_csv: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = graft("train", "--data", small_csv, "--out", tmp_path / "run", *TINY, "--track",
                 "mlflow", "--tracking-uri", f"http://127.0.0.1:{port}", check=False,
                 timeout=300, env_extra={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "tracking: mlflow could not start at" in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()  # no half-made run left behind
