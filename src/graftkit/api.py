"""The Python API: ``finetune(...) -> Run``, ``Run.load(dir)``, ``run.predict``, ``run.evaluate``.

This is where the config tree is turned into plain arguments for the builders (data, model,
strategy, loss, loop settings); nothing below this layer reads the config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import run as rd
from .config import Config, build_config, parse_override
from .errors import ConfigError, GraftError, TrainingDiverged


def validate(cfg: Config, resuming: bool = False) -> None:
    """Every name in the config refers to something registered; fail before any heavy work."""
    from .data.transforms import AUGMENTATIONS
    from .strategies import STRATEGIES
    from .train.losses import LOSSES, REGRESSION_LOSSES
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
    text = cfg.data.modality == "text"
    _check_model(cfg.model.name or "", text)
    if cfg.strategy.name == "lora" and not text:
        raise ConfigError("config key 'strategy.name': lora is for transformer (text) models; "
                          "for images use last_n, lp_ft or full")
    if text and cfg.train.augment not in ("auto", "none"):
        raise ConfigError(f"config key 'train.augment': {cfg.train.augment!r} augments images; "
                          "text runs take none")
    if text and (cfg.train.mixup or cfg.train.cutmix):
        raise ConfigError("config key 'train.mixup': MixUp/CutMix are for images")
    if text and cfg.train.wise_ft is not None and cfg.train.wise_ft_objective != "clean":
        raise ConfigError("config key 'train.wise_ft_objective': the corruption objective is "
                          "for images; text runs take clean")
    if not resuming and cfg.model.weights and not Path(cfg.model.weights).expanduser().is_file():
        raise ConfigError(f"config key 'model.weights': file {cfg.model.weights!r} not found")
    if cfg.data.path is None:
        raise ConfigError("config key 'data.path': no data given; pass --data DIR_OR_CSV")
    if not Path(cfg.data.path).expanduser().exists():
        raise ConfigError(f"config key 'data.path': {cfg.data.path!r} does not exist")
    regression = cfg.task == "regression"
    if cfg.loss.name and (cfg.loss.name in REGRESSION_LOSSES) != regression:
        raise ConfigError(f"config key 'loss.name': {cfg.loss.name!r} does not fit task {cfg.task}")
    if regression and (cfg.train.mixup or cfg.train.cutmix):
        raise ConfigError("config key 'train.mixup': MixUp/CutMix are for classification")
    if cfg.train.augment == "augmix_jsd" and (cfg.train.mixup or cfg.train.cutmix or regression):
        raise ConfigError("config key 'train.augment': augmix_jsd is for classification without "
                          "MixUp/CutMix")
    metric = monitor_metric(cfg)
    allowed = {"loss", "mae", "rmse", "r2"} if regression else {
        "loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall",
        "log_loss"}
    if metric not in allowed:
        raise ConfigError(f"config key 'train.early_stop.metric': {metric!r} is not a validation "
                          f"metric for {cfg.task}; choose one of: {', '.join(sorted(allowed))}")


def _check_model(name: str, text: bool) -> None:
    from .models.text import is_text_model
    from .models.vision import resolve_arch

    if text and not is_text_model(name):
        raise ConfigError(f"config key 'model.name': {name!r} is not a text model; the data is "
                          "text (try all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2 or a local "
                          "Hugging Face model directory)")
    if not text:
        resolve_arch(name)


def resolve_inputs(cfg: Config) -> Config:
    """Fill what depends on the data: the modality (auto: a CSV with the text column and no
    path column is text) and the default model of that modality."""
    from .data.text_sources import is_text_csv
    from .models.text_builtin import DEFAULT_TEXT_MODEL

    d = cfg.data
    modality = d.modality
    if modality == "auto":
        modality = "text" if d.path and is_text_csv(d.path, d.text_column, d.path_column) \
            else "image"
    name = cfg.model.name or (DEFAULT_TEXT_MODEL if modality == "text" else "efficientnet_lite0")
    return cfg.model_copy(update={"data": d.model_copy(update={"modality": modality}),
                                  "model": cfg.model.model_copy(update={"name": name})})


def monitor_metric(cfg: Config) -> str:
    m = cfg.train.early_stop.metric
    return m if m != "auto" else ("rmse" if cfg.task == "regression" else "accuracy")


def finetune(
    data: str | Path | None = None,
    model: str | None = None,
    strategy: str | None = None,
    *,
    epochs: int | None = None,
    out: str | Path | None = None,
    config: str | Path | Config | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Run:
    """Fine-tune ``model`` on ``data`` with ``strategy`` and return the finished :class:`Run`."""
    cfg = _compose(data, model, strategy, epochs, config, overrides)
    return train(cfg, out=out, overwrite=overwrite, quiet=quiet)


def _compose(data: Any, model: Any, strategy: Any, epochs: Any, config: Any, overrides: Any
             ) -> Config:
    base = config.model_dump() if isinstance(config, Config) else None
    cfg_file = None if isinstance(config, Config) else config
    flags = {k: v for k, v in {"data.path": str(data) if data else None, "model.name": model,
             "strategy.name": strategy, "train.epochs": epochs}.items() if v is not None}
    extra = dict(map(parse_override, overrides)) if isinstance(overrides, list) else dict(
        overrides or {})
    return build_config(cfg_file, {**flags, **extra}, base=base)


def resume(run_dir: str | Path, quiet: bool = False) -> Run:
    """Continue a stopped run from its last completed epoch."""
    p = rd.check_run_dir(run_dir)
    if not (p / rd.STATE).is_file():
        raise GraftError(f"{str(p)!r} has no checkpoint to resume from (no {rd.STATE})")
    meta = rd.read_json(p / rd.META)
    if meta.get("status") == "completed":
        raise GraftError(f"run {str(p)!r} already completed; nothing to resume")
    cfg = build_config(p / rd.CONFIG)
    return train(cfg, out=p, resume_dir=p, quiet=quiet)


def train(cfg: Config, out: str | Path | None = None, overwrite: bool = False,
          resume_dir: Path | None = None, quiet: bool = False, hooks: list[Any] | None = None
          ) -> Run:
    """Train from a validated config into a run directory. ``hooks`` run after the built-in
    ones on every event (see ``train/hooks.py``)."""
    cfg = resolve_inputs(cfg)
    validate(cfg, resuming=resume_dir is not None)
    from .session import build_session

    out_dir = Path(out) if out else rd.default_out(cfg.model.name, cfg.strategy.name)
    created = not out_dir.exists()
    if resume_dir is None:
        rd.prepare_out_dir(out_dir, overwrite)
    try:
        session = build_session(cfg, out_dir, quiet=quiet, resuming=resume_dir is not None)
    except GraftError:
        if created:  # a mistake found before training leaves no half-made run behind
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    session.extra_hooks = list(hooks or [])
    t0 = time.perf_counter()
    try:
        session.fit()
    except KeyboardInterrupt:
        session.mark("interrupted", time.perf_counter() - t0)
        if not (out_dir / rd.STATE).is_file():
            raise GraftError("interrupted before the first epoch finished; nothing to resume, "
                             "start again") from None
        raise GraftError(f"interrupted; continue with: graft train --resume {out_dir}") from None
    except TrainingDiverged:
        session.mark("diverged", time.perf_counter() - t0)
        raise
    session.finish(time.perf_counter() - t0)
    return Run(out_dir)


class Run:
    """A finished (or stopped) run directory, loaded lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = rd.check_run_dir(path)
        self.meta: dict[str, Any] = rd.read_json(self.path / rd.META)
        self._model: Any = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.meta['model']['name']!r}, " \
               f"strategy={self.meta['strategy']!r}, status={self.meta.get('status')!r})"

    @classmethod
    def load(cls, path: str | Path) -> Run:
        return cls(path)

    @property
    def config(self) -> Config:
        return build_config(self.path / rd.CONFIG)

    @property
    def metrics(self) -> dict[str, Any]:
        f = self.path / rd.METRICS
        return rd.read_json(f) if f.is_file() else {}

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def model(self) -> Any:
        if self._model is None:
            from .inference import load_model

            self._model = load_model(self.path, self.meta)
        return self._model

    def predict(self, inputs: list[Any] | Any, topk: int = 5, batch_size: int | None = None
                ) -> list[dict[str, Any]]:
        """Top-k classes with probabilities (or the value, for regression) for each input.
        ``batch_size`` defaults to the run's ``data.eval_batch_size`` (as evaluate does)."""
        from .inference import predict, run_eval_batch

        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return predict(self.model, self.meta, items, topk=topk,
                       batch_size=batch_size or run_eval_batch(self.config))

    def robustness(self, data: str | Path | None = None, split: str | None = None,
                   corruptions: str = "all", severities: str = "1-5",
                   reference: str | Path | None = None, seed: int = 0,
                   workers: int | None = None, limit: int | None = None, quiet: bool = True
                   ) -> dict[str, Any]:
        """Accuracy under the ImageNet-C corruptions (text runs: text perturbations); written
        to ``RUN_DIR/robustness/``."""
        from .robustness.evaluate import robustness

        return robustness(self, data, split, corruptions, severities, reference, seed, workers,
                          limit, quiet)

    def calibrate(self, temperature: bool = True, threshold: str = "keep",
                  target: float | None = None) -> dict[str, Any]:
        """Refit temperature scaling (and a binary threshold: f1 | precision | recall | none)
        on the validation split; predict and evaluate use it from then on."""
        from .inference import calibrate

        return calibrate(self, temperature=temperature, threshold=threshold, target=target)

    def evaluate(self, data: str | Path | None = None, split: str | None = None,
                 name: str | None = None, quiet: bool = True) -> dict[str, Any]:
        """Metrics, plots and report.html on any labeled folder or CSV (default: the run's own
        test or validation split), written to ``eval/<name>/``."""
        from .inference import evaluate

        return evaluate(self, data, split=split, name=name, quiet=quiet)
