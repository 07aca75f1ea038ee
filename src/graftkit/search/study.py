"""``graft search``: an Optuna study whose trials are ordinary graft runs.

    SEARCH_DIR/
      search.json        the settings (data, base config, metric, budget, sampler, storage, ...)
      space.yaml         the space searched (resolved copy)
      journal.log        the study (default storage)
      trials/0007/       one run directory per trial (weights kept for the best only)
      best/              the best trial's run: predict / evaluate / export read it as any run
      leaderboard.csv    trial, state, metric, seconds, parameters, note
      summary.html, plots/*.png

Each trial reports its per-epoch validation metric to the pruner through a training hook, and
early stopping watches the same metric. A head-only trial reuses the on-disk feature cache of
its backbone and data, so it costs the head alone. A trial that raises is recorded as failed
with its reason and the study goes on; CUDA out-of-memory retries once at half the batch size.
The first trial of a new study is graft's default configuration, so the search can only be
as good as or better than not searching (``--no-default-trial`` turns that off).

Workers share the study's seed, and the sampler is seeded again before each trial from (seed,
trial number), so a serial search is reproducible and parallel workers draw apart (see
``sampling.py``). A trial that draws the config of a trial already trained (or training) is not
trained: it ends at once as failed with ``duplicate_of`` and a note, is not counted towards
``--trials``, and shows as ``duplicate`` on the leaderboard. Copying the other trial's value
instead would hand the sampler and ``best/`` a result this trial did not produce.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import run as rd
from ..config import flat
from ..errors import ConfigError, GraftError
from .results import finish
from .settings import SETTINGS, SearchSettings
from .space import Space, load_space, parse_space
from .storage import describe, open_storage, optuna_module

SPACE = "space.yaml"
COUNTED = ("COMPLETE", "PRUNED")


class Pruned(Exception):
    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


class TrialFailed(Exception):
    """A trial that could not finish (its reason is in the trial's user attributes)."""


class Duplicate(TrialFailed):
    """A trial that drew the config of another trial: ended untrained, not counted."""


class _NoDuplicateWarnings(logging.Filter):
    """Optuna warns twice for every failed trial, with a traceback; a duplicate is not an error
    (the trial line and the leaderboard say what it was)."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        m = re.match(r"Trial (\d+) failed", str(record.msg))
        if m is None:
            return True
        if record.exc_info and isinstance(record.exc_info[1], Duplicate):
            self.numbers.add(int(m[1]))  # "... failed with parameters ... because of ..."
            return False
        if int(m[1]) in self.numbers:  # "... failed with value None."
            self.numbers.discard(int(m[1]))
            return False
        return True


_QUIET_DUPLICATES = _NoDuplicateWarnings()


class PruneHook:
    """Reports the validation metric after every epoch; stops the run when the pruner says so.
    Head-only epochs (a linear probe, LP-FT's probe stage) are reported but never pruned: on
    cached features they cost milliseconds, and a probe that starts slow often ends best."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_stage_start(self, state: Any) -> None:
        pass

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        self.trial.report(float(record[f"val_{self.metric}"]), step=record["epoch"])
        if record.get("unfrozen_blocks", 1) > 0 and self.trial.should_prune():
            raise Pruned(record["epoch"])

    def on_train_end(self, state: Any) -> None:
        pass


# --- the trial ---------------------------------------------------------------------------------

def base_config(s: SearchSettings) -> Any:
    """The config every trial starts from (data + the user's config file and overrides), with
    the modality and default model resolved so a space can test them in a ``when``."""
    from ..config import build_config
    from ..launch import resolve_inputs, validate

    cfg = resolve_inputs(build_config(s.config, {**s.overrides, "data.path": s.data}))
    validate(cfg)
    return cfg


def _check_metric(metric: str, task: str) -> None:
    from ..evaluate.metrics import VALIDATION_METRICS

    if metric not in VALIDATION_METRICS[task]:
        raise ConfigError(f"--metric {metric!r} is not a validation metric of a {task} run; "
                          f"choose one of: {', '.join(sorted(VALIDATION_METRICS[task]))}")


def check_space(space: Space, base: Any) -> None:
    """Every categorical choice must make a valid config on this data: a typo fails now, not as
    a failed trial an hour later."""
    from ..config import build_config
    from ..launch import validate

    base_flat, sampled = flat(base.model_dump()), set(space.keys())
    for v in space.variants:
        # a condition on a key the space samples can hold; one on the base config must
        if any(base_flat.get(k) not in vs for k, vs in v.when.items() if k not in sampled):
            continue
        for value in v.choices or []:
            try:
                validate(build_config(None, {v.key: value}, base=base.model_dump()))
            except ConfigError as e:
                raise ConfigError(f"search space {space.source}: '{v.key}: {value}' is not "
                                  f"usable here: {e}") from None


def make_objective(s: SearchSettings, space: Space, out: Path, threads: int | None) -> Any:
    from ..config import build_config
    from ..launch import train

    optuna = optuna_module()
    from .sampling import duplicate_of

    base = base_config(s)
    base_tree = base.model_dump()
    base_flat = flat(base_tree)

    def objective(trial: Any) -> float:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # a retried trial inherits its original's attributes
        for stale, empty in (("note", ""), ("error", ""), ("seconds", 0.0), ("duplicate_of", None)):
            if stale in trial.user_attrs:
                trial.set_user_attr(stale, empty)
        default = bool(trial.user_attrs.get("graft_default"))
        params = {} if default else space.sample(trial, base_flat)
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", params)
        twin = None if default else duplicate_of(trial.study.get_trials(deepcopy=False),
                                                 trial.number, params)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin)
            trial.set_user_attr("note", f"same parameters as trial {twin}: not trained")
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise Duplicate(f"same parameters as trial {twin}")
        overrides = {**params, "train.early_stop.metric": s.metric, "report.enabled": False}
        parent = trial.study.user_attrs.get(MLFLOW_RUN)
        if parent:  # MLflow: the trial's run is a child of the study's
            overrides["tracking.parent_run_id"] = parent["run_id"]
        if trial.number > 0 and not (base.data.drop_duplicates or base.data.drop_leaks):
            overrides["data.audit"] = False  # the data is the same in every trial: trial 0 warns
        if threads:
            overrides["train.threads"] = threads
        for attempt in (0, 1):
            try:
                cfg = build_config(None, overrides, base=base_tree)
                run = train(cfg, out=run_dir, overwrite=True, quiet=True,
                            hooks=[PruneHook(trial, s.metric)])
                break
            except Pruned as e:
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                trial.set_user_attr("note", str(e))
                raise optuna.TrialPruned(str(e)) from None
            except Exception as e:  # recorded with its reason; the study goes on
                if attempt == 0 and _is_oom(e):
                    batch = max(1, int(cfg.data.batch_size) // 2)
                    overrides["data.batch_size"] = batch
                    trial.set_user_attr("note", f"out of memory: retried at batch size {batch}")
                    continue
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                trial.set_user_attr("error", reason)
                raise TrialFailed(reason) from None
        value = run.meta.get("best_value")
        trial.set_user_attr("epochs", run.meta.get("best_epoch"))
        if value is None or value != value:  # NaN
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("error", f"no finite validation {s.metric}")
            raise TrialFailed(f"no finite validation {s.metric}")
        value = float(value)
        if s.objective == "robust":
            from .objective import robust_part

            r = robust_part(run, s.robust_corruptions, s.robust_severities, s.robust_limit,
                            s.seed)
            trial.set_user_attr("clean", value)
            trial.set_user_attr("mca", r["mca"])
            value += s.robust_weight * r["mca"]
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return value

    return objective


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# --- the study ---------------------------------------------------------------------------------

def make_sampler(name: str, seed: int, space: Space) -> Any:
    """The study's sampler, as every worker builds it: from the study's seed (the grid sampler
    shuffles its grid with it, alike in every worker), then seeded per trial (``TrialSeeded``)."""
    optuna = optuna_module()
    from .sampling import TrialSeeded

    if name == "tpe":  # constant_liar: parallel workers do not all pick the same point
        inner = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                           constant_liar=True, n_startup_trials=6)
    elif name == "random":
        inner = optuna.samplers.RandomSampler(seed=seed)
    elif name == "grid":  # trial N takes grid point N: workers take distinct points
        inner = optuna.samplers.GridSampler(space.grid(), seed=seed)
    else:
        raise ConfigError(f"--sampler {name!r}: choose tpe, random or grid")
    return TrialSeeded(inner, seed)


def make_pruner(name: str) -> Any:
    optuna = optuna_module()
    if name == "median":  # a trial below the median of earlier trials at the same epoch stops,
        # from its first epoch on once two trials have finished: on a CPU a hopeless
        # fine-tuning trial costs minutes per epoch
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: choose median, hyperband or none")


def open_study(s: SearchSettings, storage: Any, space: Space, create: bool) -> Any:
    optuna = optuna_module()
    kw = dict(study_name=s.study, storage=storage, sampler=make_sampler(s.sampler, s.seed, space),
              pruner=make_pruner(s.pruner))
    if not create:
        try:
            return optuna.load_study(**kw)
        except KeyError:
            raise GraftError(f"no study {s.study!r} in that storage; start it with "
                             "graft search --data ... first") from None
    study = optuna.create_study(direction=s.direction, load_if_exists=True, **kw)
    if study.user_attrs.get("graft") is None:
        study.set_user_attr("graft", {**asdict(s), "space": space.to_yaml()})
        if s.default_trial:
            study.enqueue_trial({}, user_attrs={"graft_default": True})
    return study


def counted(study: Any) -> int:
    """Trials that count towards the budget: finished or pruned, and those that failed by
    themselves (a bad combination). A trial failed by a lost heartbeat is re-queued instead; a
    duplicate (no ``error``, see ``Duplicate``) cost nothing."""
    return sum(t.state.name in COUNTED or (t.state.name == "FAIL" and bool(
        t.user_attrs.get("error"))) for t in study.get_trials(deepcopy=False))


def optimize(s: SearchSettings, out: Path, storage_url: str | None, threads: int | None,
             quiet: bool = False) -> None:
    """One worker: run trials until the study has ``s.trials`` counted or the budget is spent."""
    from .sampling import duplicates

    space = parse_space(_yaml((out / SPACE).read_text()), str(out / SPACE))
    storage = open_storage(storage_url, out, s.heartbeat_s)
    study = open_study(s, storage, space, create=False)
    objective = make_objective(s, space, out, threads)
    optuna_log = logging.getLogger("optuna.study._optimize")
    if _QUIET_DUPLICATES not in optuna_log.filters:
        optuna_log.addFilter(_QUIET_DUPLICATES)
    deadline = None if s.time_budget_s is None else time.time() + s.time_budget_s

    def enough(st: Any, trial: Any) -> None:
        if not quiet:
            _trial_line(st, trial, s.metric)
        if counted(st) >= s.trials or (deadline and time.time() > deadline):
            st.stop()
        elif s.sampler != "grid" and duplicates(st.get_trials(deepcopy=False)) >= max(
                10, s.trials):  # duplicates are not counted: on a space smaller than the
            # budget they would go on for ever (the grid sampler stops when its grid is done)
            if not quiet:
                from ..train.progress import console

                console.print("stopping: the sampler keeps drawing configs already tried "
                              "(is the space smaller than --trials?)", highlight=False)
            st.stop()

    if counted(study) >= s.trials:
        return
    timeout = None if deadline is None else max(1.0, deadline - time.time())
    study.optimize(objective, timeout=timeout, callbacks=[enough], catch=(TrialFailed,),
                   gc_after_trial=True)


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _trial_line(study: Any, t: Any, metric: str) -> None:
    from ..train.progress import console

    value = f"{metric} {t.value:.4f}" if t.value is not None else (
        t.user_attrs.get("note") or t.user_attrs.get("error") or "")
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in (t.user_attrs.get("config") or {}).items())
    try:
        best = f"  best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = ""
    state = "duplicate" if t.user_attrs.get("duplicate_of") is not None else t.state.name
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
    console.print(f"trial {t.number:>3} [{colour}]{state.lower():<8}[/] {value}  "
                  f"{t.user_attrs.get('seconds', 0):.0f} s  "
                  f"{params or '(graft default)'}{best}", highlight=False)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --- entry points ------------------------------------------------------------------------------

def search(s: SearchSettings, out: Path, space_file: str | Path | None = None,
           storage_url: str | None = None, resume: bool = False, quiet: bool = False
           ) -> dict[str, Any]:
    """Start (or continue, or join) a study, run its workers, then write the results."""
    if resume:
        saved = rd.read_json(out / SETTINGS)
        s = SearchSettings(**{**saved["settings"], **{k: v for k, v in _resume_keep(s).items()}})
        storage_url = storage_url or saved.get("storage_url")
        space = parse_space(_yaml((out / SPACE).read_text()), str(out / SPACE))
    else:
        from ..launch import AUTO_MONITOR
        from .objective import check

        _absolute(s)  # a search resumed (or joined) from another folder finds the same files
        out = out.resolve()
        base = base_config(s)
        if s.metric == "auto":  # accuracy, rmse or mAP, as a run's early stopping would watch
            s.metric = AUTO_MONITOR[base.task]
        check(s.objective, s.metric, s.robust_weight)
        _check_metric(s.metric, base.task)
        space = load_space(space_file)
        check_space(space, base)
        if s.lr_find:
            from .lr_find import centre_space

            centre_space(space, s, out, quiet)
        out.mkdir(parents=True, exist_ok=True)
        (out / SPACE).write_text(space.to_yaml())
    storage = open_storage(storage_url, out, s.heartbeat_s)  # a bad URL fails before any write
    study = open_study(s, storage, space, create=True)
    tracked = _study_run(study, s)  # an unreachable tracker fails before the folder is kept
    rd.write_json(out / SETTINGS, {"settings": asdict(s), "storage": describe(storage_url, out),
                                   "storage_url": storage_url if _local(storage_url) else None})
    requeue_dead(study, storage)
    if not quiet:
        from ..train.progress import console

        console.print(f"[bold]search[/] {s.study}: {s.trials} trials by {s.metric} "
                      f"({s.sampler}, pruner {s.pruner}, {s.workers} worker"
                      f"{'s' if s.workers > 1 else ''}); storage {describe(storage_url, out)}",
                      highlight=False)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // s.workers) if s.workers > 1 else None
    if s.workers == 1:
        optimize(s, out, storage_url, threads, quiet)
    else:
        run_workers(s, out, storage_url, threads, study, storage, quiet)
    result = finish(study, space, s, out, quiet)
    if tracked:
        from ..train.progress import console
        from ..train.tracking import end_study_run

        end_study_run(tracked, result, [out / "leaderboard.csv", out / "result.json",
                                        Path(result["summary"])],
                      lambda m: console.print(f"[yellow]warning[/]: {m}", highlight=False))
    return result


PATH_KEYS = ("data.path", "data.val", "data.test", "data.unlabeled", "model.weights")


def _absolute(s: SearchSettings) -> None:
    """The data, config and path overrides of ``s`` made absolute (those that exist here), as
    search.json and the trials keep them."""
    from ..launch import absolute_path

    s.data, s.config = absolute_path(s.data), absolute_path(s.config)
    s.overrides = {k: absolute_path(v) if k in PATH_KEYS else v for k, v in s.overrides.items()}


MLFLOW_RUN = "mlflow_run"  # the study's user attribute: its MLflow run's ids


def _study_run(study: Any, s: SearchSettings) -> dict[str, Any] | None:
    """With mlflow among the trials' trackers: the study's MLflow run (made by the first process
    that opens the study, kept in the study so every worker nests its trials under it)."""
    from ..config import build_config

    t = build_config(s.config, s.overrides).tracking
    if "mlflow" not in t.backends:
        return None
    ids = study.user_attrs.get(MLFLOW_RUN)
    if ids is None:
        from ..train.tracking import check, study_run

        check(t.backends)
        ids = study_run(t.uri, t.experiment, s.study, {"search": asdict(s)})
        study.set_user_attr(MLFLOW_RUN, ids)
    return ids


def _local(url: str | None) -> bool:
    return not url or "@" not in url  # a URL with a password is not written to disk


def _resume_keep(s: SearchSettings) -> dict[str, Any]:
    """On --resume, what the command line may change: the budget and the workers."""
    keep = {"workers": s.workers}
    if s.trials:
        keep["trials"] = s.trials
    if s.time_budget_s:
        keep["time_budget_s"] = s.time_budget_s
    return keep


def run_workers(s: SearchSettings, out: Path, storage_url: str | None, threads: int | None,
                study: Any, storage: Any, quiet: bool) -> None:
    """``--workers K``: K worker processes on this machine share the study through its storage.
    A worker that dies (killed, out of memory) has its running trial re-queued."""
    env = dict(os.environ)
    if storage_url:
        env["GRAFT_SEARCH_STORAGE"] = storage_url
    cmd = [sys.executable, "-m", "graftkit.search.worker", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    if quiet:
        cmd.append("--quiet")
    procs = [subprocess.Popen(cmd, env=env) for _ in range(s.workers)]
    replacements = s.workers  # a worker that keeps dying is not restarted forever
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code != 0:
                    requeue_dead(study, storage, pids={p.pid})
                    if counted(study) < s.trials and replacements > 0:  # the study is not done
                        replacements -= 1
                        procs.append(subprocess.Popen(cmd, env=env))
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise


def requeue_dead(study: Any, storage: Any, pids: set[int] | None = None) -> int:
    """Mark failed the RUNNING trials of dead workers on this host (given ``pids``, or any whose
    process is gone), and queue each once more with the same parameters. ``storage`` is the
    study's: its public methods reach a trial that another process runs."""
    optuna = optuna_module()
    host, n = socket.gethostname(), 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        h, _, pid = worker.rpartition(":")
        if h != host or not pid.isdigit():
            continue
        if (pids is not None and int(pid) not in pids) or (pids is None and _alive(int(pid))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "note", "worker died; re-queued")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        if t.user_attrs.get("retry_of") is None:  # one retry, not a chain
            attrs = {"retry_of": t.number, **({"graft_default": True}
                                              if t.user_attrs.get("graft_default") else {})}
            study.enqueue_trial(t.params, user_attrs=attrs)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settings_from_study(storage_url: str, study_name: str, out: Path, heartbeat_s: int
                        ) -> tuple[SearchSettings, Space]:
    """A worker joining a study from another machine: the study carries the settings."""
    optuna = optuna_module()
    storage = open_storage(storage_url, out, heartbeat_s)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise GraftError(f"no study {study_name!r} in that storage; give --data to start "
                         "it") from None
    g = study.user_attrs.get("graft")
    if not g:
        raise GraftError(f"study {study_name!r} was not made by graft search")
    space_text = g.pop("space")
    return SearchSettings(**g), parse_space(_yaml(space_text), f"study {study_name}")


def dump_settings(s: SearchSettings) -> str:
    return json.dumps(asdict(s))
