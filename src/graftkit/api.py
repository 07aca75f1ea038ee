"""The Python API: ``finetune(...) -> Run``, ``Run.load(dir)``, ``run.predict``, ``run.evaluate``.

A thin facade: runs start in :mod:`graftkit.launch`, and :class:`Run` is the run handle every
consumer takes (:class:`graftkit.inference.LoadedRun`) with the user's verbs on it. Nothing in the
package imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import launch
from .config import Config, build_config, parse_override
from .errors import ConfigError, GraftError, check_flags, check_whole
from .inference import LoadedRun
from .launch import monitor_metric, resolve_inputs, validate

__all__ = ["Run", "audit", "build_config", "finetune", "load_run", "monitor_metric",
           "resolve_inputs", "resume", "train", "validate"]


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
    if config is not None and not isinstance(config, (str, Path, Config)):
        raise ConfigError(f"config: a YAML file path or a Config, not {type(config).__name__}")
    if overrides is not None and not isinstance(overrides, (list, tuple, dict)):
        raise ConfigError("overrides: a dict of config keys to values ({'optim.lr': 0.01}) or a "
                          f"list of 'key=value' strings, not {type(overrides).__name__}")
    base = config.model_dump() if isinstance(config, Config) else None
    cfg_file = None if isinstance(config, Config) else config
    flags = {k: v for k, v in {"data.path": str(data) if data else None, "model.name": model,
             "strategy.name": strategy, "train.epochs": epochs}.items() if v is not None}
    extra = dict(map(parse_override, overrides)) if isinstance(overrides, (list, tuple)) else \
        dict(overrides or {})
    for key, value in flags.items():  # an argument and an override of the same key must agree
        if key in extra and str(extra[key]) != str(value):
            raise ConfigError(f"config key {key!r} given twice: {value!r} as an argument and "
                              f"{extra[key]!r} in overrides")
    return build_config(cfg_file, {**flags, **extra}, base=base)


def audit(data: str | Path, model: str | None = None, *, out: str | Path | None = None,
          config: str | Path | Config | None = None,
          overrides: list[str] | dict[str, Any] | None = None, label_issues: bool = True,
          quiet: bool = False) -> dict[str, Any]:
    """Audit ``data`` as ``graft audit`` does; returns what it wrote to ``OUT/audit.json``
    (default ``OUT``: ``audits/<data name>``)."""
    from . import run as rd
    from .audit.run import AUDIT, audit_data, one_backbone

    check_flags(label_issues=label_issues, quiet=quiet)
    cfg = resolve_inputs(_compose(data, model, None, None, config, overrides))
    validate(one_backbone(cfg))  # --model auto: the audit reads the default backbone
    target = Path(out) if out else Path("audits") / rd.safe_name(Path(str(data)).stem or "data")
    audit_data(cfg, target, quiet=quiet, label_issues=label_issues)
    return {"out": str(target), **rd.read_json(target / AUDIT)}


def resume(run_dir: str | Path, quiet: bool = False) -> Run | None:
    """Continue a stopped run from its last completed epoch (None: see :func:`train`)."""
    check_flags(quiet=quiet)
    loaded = launch.resume(run_dir, quiet=quiet)
    return None if loaded is None else Run(loaded.path)


def train(cfg: Config, out: str | Path | None = None, overwrite: bool = False,
          resume_dir: Path | None = None, quiet: bool = False, hooks: list[Any] | None = None
          ) -> Run | None:
    """Train from a validated config into a run directory. ``hooks`` run after the built-in
    ones on every event (see ``train/hooks.py``). Under torchrun every process calls this and
    rank 0 gets the run; the others get None. ``resume_dir``: continue that stopped run in its
    own folder (as :func:`resume` does, with ``cfg`` instead of the run's saved config)."""
    check_flags(overwrite=overwrite, quiet=quiet)
    if not isinstance(cfg, Config):
        raise ConfigError(f"cfg: a Config (build_config(...)), not {type(cfg).__name__}")
    if resume_dir is not None:
        resume_dir, _ = launch.resume_config(resume_dir)
        if out is not None and Path(out).resolve() != resume_dir.resolve():
            raise GraftError(f"out={str(out)!r} and resume_dir={str(resume_dir)!r}: a resumed "
                             "run goes on in its own folder; leave out out")
        out = resume_dir
    loaded = launch.train(cfg, out, overwrite, resume_dir, quiet, hooks)
    return None if loaded is None else Run(loaded.path)


class Run(LoadedRun):
    """A finished (or stopped) run directory, loaded lazily: :class:`LoadedRun` and what a user
    does with it."""

    @classmethod
    def load(cls, path: str | Path) -> Run:
        return cls(path)

    def predict(self, inputs: list[Any] | Any, topk: int = 5, batch_size: int | None = None,
                tta: int | None = None) -> list[dict[str, Any]]:
        """Top-k classes with probabilities (or the value, for regression) for each input.
        ``batch_size`` defaults to the run's ``data.eval_batch_size`` (as evaluate does);
        ``tta``: test-time views averaged (default: the run's ``report.tta``; 1 = off)."""
        from .inference import predict

        if inputs is None or isinstance(inputs, (bytes, bytearray, dict, int, float)):
            raise GraftError(f"inputs: a list of {self.modality.noun}s (or one), not "
                             f"{type(inputs).__name__}")
        for name, value in (("topk", topk), ("batch_size", batch_size), ("tta", tta)):
            check_whole(name, value)
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return predict(self, list(items), topk=topk, batch_size=batch_size, tta=tta)

    def robustness(self, data: str | Path | None = None, split: str | None = None,
                   corruptions: str = "all", severities: str = "1-5",
                   reference: str | Path | None = None, seed: int = 0,
                   workers: int | None = None, limit: int | None = None, quiet: bool = True,
                   engine: str | None = None) -> dict[str, Any]:
        """Accuracy under the ImageNet-C corruptions (text runs: text perturbations); written
        to ``RUN_DIR/robustness/``. ``engine``: auto | onnx | torch for the model (default: the
        run's ``train.feature_engine``). Images are corrupted in worker processes (``spawn``),
        which re-run the calling script's top level: call this under ``if __name__ ==
        "__main__":``, or pass ``workers=0``."""
        from .robustness.evaluate import robustness

        check_flags(quiet=quiet)
        return robustness(self, data, split, corruptions, severities, reference, seed, workers,
                          limit, quiet, engine)

    def calibrate(self, temperature: bool = True, threshold: str = "keep",
                  target: float | None = None) -> dict[str, Any]:
        """Refit temperature scaling (and a binary threshold: f1 | precision | recall | none)
        on the validation split; predict and evaluate use it from then on."""
        from .inference import calibrate

        check_flags(temperature=temperature)
        return calibrate(self, temperature=temperature, threshold=threshold, target=target)

    def evaluate(self, data: str | Path | None = None, split: str | None = None,
                 name: str | None = None, quiet: bool = True, tta: int | None = None
                 ) -> dict[str, Any]:
        """Metrics, plots and report.html on any labeled folder or CSV (default: the run's own
        test or validation split), written to ``eval/<name>/``; ``tta``: test-time views
        averaged (default: the run's ``report.tta``), compared with the plain model in
        ``tta``."""
        from .inference import evaluate

        check_flags(quiet=quiet)
        return evaluate(self, data, split=split, name=name, quiet=quiet, tta=tta)


def load_run(path: str | Path) -> Run:
    """The run directory at ``path``."""
    return Run(path)
