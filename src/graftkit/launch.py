"""Starting a training run: resolve what depends on the data, validate the config before any
heavy work, then build the session, fit, finish, and hand back the run (:class:`LoadedRun`).

The public facade (:mod:`graftkit.api`) and ``graft search`` both start runs through here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import modalities
from . import run as rd
from .config import Config, build_config
from .data.spec import MULTILABEL_COLUMN, csv_header
from .errors import ConfigError, GraftError, TrainingDiverged
from .evaluate.metrics import VALIDATION_METRICS
from .inference import LoadedRun
from .models.base import SEPARATOR
from .threads import thread_count, use_threads
from .train import select


def resolve_inputs(cfg: Config) -> Config:
    """Fill what depends on the data: the modality (``auto``: the first modality that recognises
    the data, e.g. a CSV with the text column and no path column is text), its default model,
    and the task (a CSV with a ``labels`` column and no ``label`` one is multi-label)."""
    d = cfg.data
    name = modalities.detect(d)
    model = cfg.model.name or modalities.get(name).default_model
    task, data = cfg.task, {"modality": name, **_absolute(d, ("path", "val", "test", "unlabeled"))}
    if task == "classification" and d.label_column == "label" and d.path:
        header = csv_header(d.path)  # a "labels" column and no "label" one: multi-label data
        if MULTILABEL_COLUMN in header and "label" not in header:
            task, data["label_column"] = "multilabel", MULTILABEL_COLUMN
    return cfg.model_copy(update={"task": task, "data": d.model_copy(update=data),
                                  "model": cfg.model.model_copy(update={
                                      "name": model, **_absolute(cfg.model, ("weights",))})})


def _absolute(section: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The paths of ``section`` made absolute (:func:`absolute_path`): the run's saved config
    then finds its data again from any folder (evaluate, --resume)."""
    return {k: absolute_path(getattr(section, k)) for k in keys}


def absolute_path(value: Any) -> Any:
    """A path (str) that exists here, made absolute; anything else as it is (None, a number, a
    path that does not exist, which its own check names)."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def monitor_metric(cfg: Config) -> str:
    m = cfg.train.early_stop.metric
    return m if m != "auto" else AUTO_MONITOR[cfg.task]


AUTO_MONITOR = {"classification": "accuracy", "regression": "rmse", "multilabel": "mAP"}


def validate(cfg: Config, resuming: bool = False) -> None:
    """Every name in the config refers to something registered and fits the data's modality and
    task; fail before any heavy work."""
    from .data.transforms import AUGMENTATIONS
    from .strategies import STRATEGIES
    from .train.losses import LOSSES, loss_task
    from .train.optim import OPTIMIZERS, SCHEDULES

    cfg = resolve_inputs(cfg)
    checks = [("strategy.name", STRATEGIES, cfg.strategy.name), ("optim.name", OPTIMIZERS,
              cfg.optim.name), ("optim.schedule", SCHEDULES, cfg.optim.schedule)]
    if cfg.train.augment != "auto":
        checks.append(("train.augment", AUGMENTATIONS, cfg.train.augment))
    if cfg.loss.name:
        checks.append(("loss.name", LOSSES, cfg.loss.name))
    for key, reg, name in checks:
        if name not in reg:
            raise ConfigError(f"config key '{key}': unknown {reg.kind} {name!r}; choose one of: "
                              f"{', '.join(reg.names())}")
    modality = modalities.get(cfg.data.modality)
    if cfg.model.name == select.AUTO:
        select.check(cfg, modality.auto_candidates())
    elif SEPARATOR in (cfg.model.name or "") and not modality.combines:
        raise ConfigError(f"config key 'model.name': {cfg.model.name!r}: one head on several "
                          f"backbones is for images; {modality.name} runs take one backbone")
    else:
        modality.check_model(cfg.model.name or "")
    if cfg.model.budget is not None and cfg.model.name != select.AUTO:
        raise ConfigError("config key 'model.budget': the budget bounds --model auto's "
                          "selection; this run names its model")
    strategy = STRATEGIES.get(cfg.strategy.name)
    strategy.check_modality(cfg.strategy.name, modality.name)
    d = cfg.data
    if strategy.classification_only and cfg.task != "classification":
        raise ConfigError(f"config key 'strategy.name': {cfg.strategy.name} is for "
                          "single-label classification")
    if d.unlabeled_rest and not d.shots:
        raise ConfigError("config key 'data.unlabeled_rest': the rest of what? give --shots K "
                          "too (K labeled examples per class kept, the others unlabeled)")
    if (d.unlabeled or d.unlabeled_rest or d.shots) and cfg.task != "classification":
        raise ConfigError("config key 'data.shots': few-shot and semi-supervised training are "
                          "for single-label classification")
    if cfg.semi.method != "auto" and not (d.unlabeled or d.unlabeled_rest):
        raise ConfigError(f"config key 'semi.method': {cfg.semi.method} needs unlabeled data: "
                          "--unlabeled POOL, or --shots K --unlabeled-rest")
    if d.unlabeled and not Path(d.unlabeled).expanduser().exists():
        raise ConfigError(f"config key 'data.unlabeled': {d.unlabeled!r} does not exist")
    if cfg.train.wise_ft is not None or d.unlabeled or d.unlabeled_rest:
        from .session import plan_stages

        stages = plan_stages(cfg, strategy)  # WiSE-FT's and the semi-supervised method's checks
        if any(st.solve for st in stages) and cfg.train.augment not in ("auto", "none"):
            raise ConfigError(f"config key 'train.augment': {cfg.strategy.name} is fitted once "
                              "on cached features; it takes no augmentation")
    modality.check_config(cfg)
    from .train.engines import check as check_engine

    check_engine(cfg.train.feature_engine)
    if cfg.tracking.backends:
        from .train.tracking import check as check_tracking

        check_tracking(cfg.tracking.backends)
    if not resuming and cfg.model.weights and not Path(cfg.model.weights).expanduser().is_file():
        raise ConfigError(f"config key 'model.weights': file {cfg.model.weights!r} not found")
    if cfg.data.path is None:
        raise ConfigError("config key 'data.path': no data given; pass --data DIR_OR_CSV")
    if not Path(cfg.data.path).expanduser().exists():
        raise ConfigError(f"config key 'data.path': {cfg.data.path!r} does not exist")
    single = cfg.task == "classification"  # one label per example
    if cfg.loss.name and loss_task(cfg.loss.name) != cfg.task:
        fits = ", ".join(n for n in LOSSES.names() if loss_task(n) == cfg.task)
        raise ConfigError(f"config key 'loss.name': {cfg.loss.name!r} does not fit task "
                          f"{cfg.task} (losses for it: {fits})")
    if not single and (cfg.train.mixup or cfg.train.cutmix):
        raise ConfigError("config key 'train.mixup': MixUp/CutMix are for single-label "
                          "classification")
    if cfg.train.augment == "augmix_jsd" and (cfg.train.mixup or cfg.train.cutmix or not single):
        raise ConfigError("config key 'train.augment': augmix_jsd is for single-label "
                          "classification without MixUp/CutMix")
    if cfg.task == "multilabel":
        _check_multilabel(cfg)
    metric, allowed = monitor_metric(cfg), VALIDATION_METRICS[cfg.task]
    if metric not in allowed:
        raise ConfigError(f"config key 'train.early_stop.metric': {metric!r} is not a validation "
                          f"metric for {cfg.task}; choose one of: {', '.join(sorted(allowed))}")


def _check_multilabel(cfg: Config) -> None:
    """What a multi-label run cannot do yet, refused before any work."""
    if cfg.loss.class_weights != "none":
        raise ConfigError("config key 'loss.class_weights': class weights are for single-label "
                          "classification (a multi-label run tunes one threshold per label)")
    if cfg.calibration.threshold != "none":
        raise ConfigError("config key 'calibration.threshold': a multi-label run tunes one "
                          "threshold per label on validation (F1) itself")
    if cfg.train.wise_ft_objective != "clean":
        raise ConfigError("config key 'train.wise_ft_objective': the corruption objective scores "
                          "single-label accuracy; a multi-label run sweeps WiSE-FT on clean "
                          "validation data")
    if cfg.report.tta > 1:
        raise ConfigError("config key 'report.tta': test-time augmentation is for single-label "
                          "classification and regression runs, not multi-label ones yet")


def resume_config(run_dir: str | Path) -> tuple[Path, Config]:
    """The run directory and saved config of a run that can be resumed."""
    p = rd.check_run_dir(run_dir)
    if not (p / rd.STATE).is_file():
        raise GraftError(f"{str(p)!r} has no checkpoint to resume from (no {rd.STATE})")
    meta = rd.read_json(p / rd.META)
    if meta.get("status") == "completed":
        raise GraftError(f"run {str(p)!r} already completed; nothing to resume")
    return p, build_config(p / rd.CONFIG)


def resume(run_dir: str | Path, quiet: bool = False) -> LoadedRun | None:
    """Continue a stopped run from its last completed epoch."""
    p, cfg = resume_config(run_dir)
    return train(cfg, out=p, resume_dir=p, quiet=quiet)


def train(cfg: Config, out: str | Path | None = None, overwrite: bool = False,
          resume_dir: Path | None = None, quiet: bool = False, hooks: list[Any] | None = None
          ) -> LoadedRun | None:
    """Train from a validated config into a run directory. ``hooks`` run after the built-in
    ones on every event (see ``train/hooks.py``).

    Under torchrun (``WORLD_SIZE`` > 1) every worker calls this; they train together, rank 0
    alone writes the run directory and finishes it (scores, calibration, reports) and returns
    the run; the other ranks return None once training ends."""
    setup = time.perf_counter()  # the imports below and the checks: the timings' "setup"
    from .session import build_session
    from .train import distributed
    from .train.device import resolve_device

    world = distributed.world_from_env()
    if world.size > 1:  # join the others first: they agree on every mistake below
        distributed.start(world, resolve_device(cfg.train.device))
    problem: GraftError | None = None
    try:
        cfg = resolve_inputs(cfg)
        validate(cfg, resuming=resume_dir is not None)
    except GraftError as e:
        problem = e
    _raise(world.agree(problem))
    out_dir = Path(out) if out else rd.default_out(cfg.model.name, cfg.strategy.name)
    created = replacing = False
    if world.main:  # rank 0 alone decides the run directory
        created = not out_dir.exists()
        try:
            _outside_data(out_dir, cfg.data.path)
            # A run being replaced (--overwrite) stays as it is until the new one has passed
            # every check of its data and model: the new one is set up in a sibling folder,
            # then swapped in.
            replacing = resume_dir is None and rd.check_out_dir(out_dir, overwrite)
        except GraftError as e:
            problem = e
    _raise(world.agree(problem))
    out_dir = Path(world.broadcast(str(out_dir)))
    # the highest folder this run creates (e.g. runs/ for the default --out), removed again with
    # the run when a mistake is found before training
    top = out_dir
    while not top.parent.exists():
        top = top.parent
    build_dir = rd.sibling(out_dir, "new") if replacing else out_dir
    if world.main:
        build_dir.mkdir(parents=True, exist_ok=True)
    try:
        session = build_session(cfg, build_dir, monitor_metric(cfg), quiet=quiet,
                                resuming=resume_dir is not None, world=world,
                                name=out_dir.name, setup_s=time.perf_counter() - setup)
    except GraftError as e:
        problem = e
    problem = world.agree(problem)
    if problem is not None:
        if world.main and (created or replacing):  # a mistake found before training leaves
            import shutil  # no half-made run

            shutil.rmtree(top if created else build_dir, ignore_errors=True)
        _raise(problem)
    if replacing:
        rd.replace_dir(out_dir, build_dir)
        session.out = out_dir
    session.extra_hooks = list(hooks or [])
    t0 = time.perf_counter()
    if not world.main:
        _fit_worker(session)
        return None
    try:
        session.fit()
        if world.size > 1:  # the others are done: rank 0 finishes with the machine's threads
            distributed.leave(sync=True)
            use_threads(thread_count(cfg.train.threads))
    except KeyboardInterrupt:
        session.mark("interrupted", time.perf_counter() - t0)
        if not (out_dir / rd.STATE).is_file():
            raise GraftError("interrupted before the first epoch finished; nothing to resume, "
                             "start again") from None
        raise GraftError(f"interrupted; continue with: graft train --resume {out_dir}") from None
    except TrainingDiverged:
        session.mark("diverged", time.perf_counter() - t0)
        raise
    except OSError as e:  # disk full, the run folder made read-only or removed, ...
        raise _failed(session, out_dir, e, time.perf_counter() - t0) from None
    except RuntimeError as e:
        if world.size == 1 or not distributed.lost_peer(e):
            raise
        raise _lost_peer(session, out_dir, e, time.perf_counter() - t0) from None
    try:
        session.finish(time.perf_counter() - t0)
    except OSError as e:
        raise _failed(session, out_dir, e, time.perf_counter() - t0) from None
    return LoadedRun(out_dir)


def _outside_data(out_dir: Path, data: str | None) -> None:
    """A run directory inside a data folder would be read as data (a class folder) next time,
    and this time half-made: refused."""
    if data and Path(data).is_dir() and out_dir.resolve().is_relative_to(
            Path(data).resolve()):
        raise GraftError(f"--out {str(out_dir)!r} is inside the data folder {data!r}; choose "
                         "a folder outside it")


def _raise(problem: GraftError | None) -> None:
    """Raise an agreed mistake (:meth:`World.agree`: every rank raises it, rank 0's is the one
    printed). The ranks leave the process group together first: one that exited with the group
    still up would tear gloo down under another, which aborts that one (SIGABRT, "terminate
    called without an active exception") and makes a second error of one mistake."""
    if problem is not None:
        from .train import distributed

        try:
            distributed.leave(sync=True)
        except RuntimeError:  # a peer already gone: nothing left to wait for
            try:
                distributed.leave()
            except RuntimeError:
                pass
        raise problem


def _fit_worker(session: Any) -> None:
    """A worker other than rank 0: train, then leave; its errors are rank 0's too (a diverged
    loss is the global batch's, an interrupt reaches every rank, rank 0 says when another
    process died), so it reports none."""
    from .train import distributed

    done = False
    try:
        session.fit()
        done = True
    except (GraftError, KeyboardInterrupt) as e:
        raise distributed.peer_failed(str(e) if isinstance(e, GraftError) else "interrupted"
                                      ) from None
    except RuntimeError as e:
        if not distributed.lost_peer(e):
            raise
        raise distributed.peer_failed() from None
    finally:
        distributed.leave(sync=done)


def _lost_peer(session: Any, out_dir: Path, e: RuntimeError, seconds: float) -> GraftError:
    """Rank 0, when another training process died: record it; the one-line error says how to
    go on (under graft train --nproc the launcher says it, naming the process that died)."""
    import os

    from .train import distributed

    reason = "another training process stopped or died"
    try:
        session.mark("failed", seconds, reason)
    except OSError:
        pass
    if os.environ.get(distributed.LAUNCHER_ENV):
        return distributed.peer_failed(reason)
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    keep = ("the last finished epoch is kept; continue with: graft train --resume "
            f"{out_dir}" if (out_dir / rd.STATE).is_file() else "no epoch finished; start again")
    return GraftError(f"{reason} ({first}); {keep}")


def _failed(session: Any, out_dir: Path, e: OSError, seconds: float) -> GraftError:
    """Record in ``meta.json`` that the run failed, and why (when the disk still lets us), and
    the one-line error that says how to go on."""
    reason = f"{e.strerror or type(e).__name__}" + (f": {e.filename}" if e.filename else "")
    try:
        session.mark("failed", seconds, reason)
    except OSError:
        pass  # nothing more can be written there; the error below still says what happened
    if (out_dir / rd.STATE).is_file():
        return GraftError(f"training stopped: {reason}; the last finished epoch is kept; fix "
                          f"this, then continue with: graft train --resume {out_dir}")
    return GraftError(f"training stopped before its first epoch finished: {reason}")
