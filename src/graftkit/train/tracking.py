"""Experiment tracking: a run's config, every epoch's metrics, its final metrics and its files,
sent to MLflow and/or written as TensorBoard event files (``tracking.backends``).

Rank 0 alone tracks. The trackers' ids go into ``meta.json`` (``tracking``), so ``graft train
--resume`` continues the same MLflow run and the same TensorBoard folder. A tracker that cannot
start is a one-line error before training; one that fails later is warned about once and
dropped, and training goes on (the run directory has everything).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from ..config import flat
from ..errors import ConfigError, GraftError
from .hooks import BaseHook, LoopState

BACKENDS = ("mlflow", "tensorboard")
_NEEDS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
HINT = "pip install 'graftkit[track]'"
EVENTS_DIR = "tensorboard"


def check(backends: list[str]) -> None:
    """Fail before any work when a tracker's library is not installed."""
    for name in backends:
        if importlib.util.find_spec(_NEEDS[name]) is None:
            raise ConfigError(f"config key 'tracking.backends': {name} is not installed; {HINT}")


def numbers(record: dict[str, Any], skip: tuple[str, ...] = ("epoch", "stage_epoch")
            ) -> dict[str, float]:
    """The numeric fields of an epoch's record (booleans and counters of epochs left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def _experiment(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


class MlflowTracker:
    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str, run_name: str,
                 params: dict[str, Any], tags: dict[str, str], resume: dict[str, Any] | None,
                 parent: str | None = None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # a resumed run continues where it was tracked (its saved uri), from whatever folder
        self.client = MlflowClient(tracking_uri=uri or (resume or {}).get("uri"))
        self.uri = self.client.tracking_uri
        if resume:
            self.run_id = resume["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp_id = _experiment(self.client, experiment)
        if parent:  # MLflow's own nesting tag: the UI shows the run under its parent
            tags = {**tags, "mlflow.parentRunId": parent}
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in flat(params).items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "uri": self.uri}

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in values.items()])

    def files(self, paths: list[tuple[Path, str | None]], run_dir: Path) -> None:
        self.client.set_tag(self.run_id, "graft.run_dir", str(run_dir.resolve()))
        for p, where in paths:
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), where)
            elif p.is_file():
                self.client.log_artifact(self.run_id, str(p), where)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status={
            "completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, out: Path, config_yaml: str, resume: dict[str, Any] | None,
                 next_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = out / EVENTS_DIR
        # a resumed run drops what its first attempt logged after the last finished epoch
        self.writer = SummaryWriter(str(self.dir), purge_step=next_step if resume else None)
        if not resume:
            self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)

    def ids(self) -> dict[str, Any]:
        return {"log_dir": EVENTS_DIR}  # inside the run directory

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def files(self, paths: list[tuple[Path, str | None]], run_dir: Path) -> None:
        pass  # the event files live in the run directory beside them

    def end(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class Tracking(BaseHook):
    """The trackers of one run; also the training loop's hook that logs every epoch."""

    def __init__(self, trackers: list[Any], warn: Any) -> None:
        self.trackers, self.warn = trackers, warn
        self.last_step = 0

    def ids(self) -> dict[str, Any]:
        return {t.name: t.ids() for t in self.trackers}

    def _each(self, what: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, what)(*args)
            except Exception as e:  # the run goes on; its directory has everything
                self.trackers.remove(t)
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                self.warn(f"tracking: {t.name} failed ({type(e).__name__}: {first}); "
                          "training goes on without it")

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        self.last_step = int(record["epoch"])
        self._each("metrics", numbers(record), self.last_step)

    def final(self, metrics: dict[str, Any], files: list[tuple[Path, str | None]],
              run_dir: Path) -> None:
        """The final scores (``final/<split>_<metric>``) and the run's files."""
        values = {f"final/{split}_{k}": v for split, m in metrics.items() if isinstance(m, dict)
                  for k, v in numbers(m, skip=()).items()}
        self._each("metrics", values, self.last_step)
        self._each("files", files, run_dir)

    def end(self, status: str) -> None:
        self._each("end", status)
        self.trackers = []


def start(backends: list[str], out: Path, *, uri: str | None, experiment: str, run_name: str,
          config: dict[str, Any], config_yaml: str, tags: dict[str, str],
          resume: dict[str, Any] | None, next_step: int, warn: Any, parent: str | None = None
          ) -> Tracking:
    """Start (or, with the ids a first attempt saved, continue) every tracker named."""
    trackers: list[Any] = []
    resume = resume or {}
    for name in backends:
        try:
            if name == "mlflow":
                trackers.append(MlflowTracker(uri, experiment, run_name, config, tags,
                                              resume.get("mlflow"), parent))
            else:
                trackers.append(TensorBoardTracker(out, config_yaml, resume.get("tensorboard"),
                                                   next_step))
        except Exception as e:
            for t in trackers:
                t.end("failed")
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            where = f" at {uri}" if name == "mlflow" and uri else ""
            raise GraftError(f"tracking: {name} could not start{where} ({type(e).__name__}: "
                             f"{first})") from None
    return Tracking(trackers, warn)


def study_run(uri: str | None, experiment: str, name: str, params: dict[str, Any]
              ) -> dict[str, Any]:
    """A study's own MLflow run (``graft search``), the parent of its trials' runs: the search
    settings as parameters. Returns its ids; a one-line error when MLflow cannot be reached."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(_experiment(client, experiment), run_name=name,
                                tags={"graft.kind": "search"})
        items = [Param(k, str(v)[:6000]) for k, v in flat(params).items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise GraftError(f"tracking: mlflow could not start the study's run"
                         f"{f' at {uri}' if uri else ''} ({type(e).__name__}: {first})") from None
    return {"run_id": run.info.run_id, "uri": client.tracking_uri}


def end_study_run(ids: dict[str, Any], result: dict[str, Any], files: list[Path],
                  warn: Any) -> None:
    """The study's outcome on its run (best value and trial, trial counts, the leaderboard and
    summary as artifacts), then FINISHED; a failure is one warning (the search folder has it)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=ids["uri"])
        values = {"best_value": result.get("best_value"), "best_trial": result.get("best_trial"),
                  **{f"trials_{k}": v for k, v in (result.get("states") or {}).items()}}
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                client.log_metric(ids["run_id"], k, float(v))
        for f in files:
            if f.is_file():
                client.log_artifact(ids["run_id"], str(f))
        client.set_terminated(ids["run_id"], status="FINISHED")
    except Exception as e:
        warn(f"tracking: mlflow could not record the study's outcome ({type(e).__name__}: "
             f"{str(e).strip()[:200]})")
