"""``graft search`` and ``graft lr-find``."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..errors import ConfigError, GraftError


def parse_duration(text: str | None) -> float | None:
    """``"30m"`` -> 1800.0; also ``90s``, ``2h``, ``1h30m``, or plain seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t.replace(" ", ""):
        raise ConfigError(f"--time-budget {text!r}: give a duration like 30m, 1h30m, 900s")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


def search(
    data: str | None = typer.Option(None, "--data", help="image folder, CSV manifest, or CSV of "
                                    "labeled texts"),
    out: Path | None = typer.Option(None, "--out", help="search folder to write"),
    trials: int | None = typer.Option(None, "--trials", min=1, help="trials to finish "
                                      "(default 20)"),
    time_budget: str | None = typer.Option(None, "--time-budget", help="stop starting trials "
                                           "after this long, e.g. 30m"),
    space: Path | None = typer.Option(None, "--space", help="search space YAML (default: the "
                                      "shipped one)"),
    metric: str = typer.Option("auto", "--metric", help="validation metric to optimise "
                               "(auto: accuracy, rmse for regression, mAP for multilabel)"),
    objective: str = typer.Option("clean", "--objective", help="clean (the metric) | robust "
                                  "(the metric + --robust-weight x mCA under corruptions)"),
    robust_weight: float = typer.Option(0.5, "--robust-weight"),
    robust_corruptions: str | None = typer.Option(None, "--robust-corruptions", help="names "
                                                  "or a family (default: one per family)"),
    study: str | None = typer.Option(None, "--study", help="study name (default: the --out "
                                     "folder's name)"),
    storage: str | None = typer.Option(None, "--storage", help="postgresql://... to share the "
                                       "study across machines (default: a journal file in --out)"),
    workers: int = typer.Option(1, "--workers", min=1, help="worker processes on this machine"),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe | random | grid"),
    pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none"),
    seed: int = typer.Option(0, "--seed", help="the study's seed: trial N draws from (seed, "
                             "N), so workers draw apart and a serial search repeats"),
    lr_find: bool = typer.Option(False, "--lr-find", help="centre each strategy's lr range on "
                                 "a learning-rate range test first"),
    no_default_trial: bool = typer.Option(False, "--no-default-trial", help="don't run graft's "
                                          "default config as the first trial"),
    heartbeat: int = typer.Option(30, "--heartbeat", min=1, help="database storages: seconds "
                                  "between worker heartbeats"),
    config: Path | None = typer.Option(None, "-c", "--config", help="base YAML config"),
    model: str | None = typer.Option(None, "--model", help="base model (the space may vary it)"),
    val: str | None = typer.Option(None, "--val", help="text: validation CSV"),
    test: str | None = typer.Option(None, "--test", help="text: test CSV"),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="unlabeled pool, given to "
                                         "every trial (semi-supervised)"),
    shots: int | None = typer.Option(None, "--shots", min=1, help="K labeled training examples "
                                     "per class, in every trial"),
    unlabeled_rest: bool = typer.Option(False, "--unlabeled-rest", help="with --shots: the "
                                        "other training examples are the unlabeled pool"),
    resume: Path | None = typer.Option(None, "--resume", help="continue (or join) the search "
                                       "in this folder"),
    keep_weights: bool = typer.Option(False, "--keep-weights", help="keep every finished "
                                      "trial's weights (for graft soup); by default only the "
                                      "best trial's stay"),
    track: list[str] | None = typer.Option(None, "--track", help="mlflow | tensorboard (repeat "
                                           "for both): every trial is tracked; in MLflow as a "
                                           "child of the study's run"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="mlflow: tracking "
                                            "URI, e.g. http://127.0.0.1:5000"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    overrides: list[str] | None = typer.Argument(None, help="base config overrides key=value"),
) -> None:
    """Search fine-tuning strategies and hyperparameters with Optuna."""
    from ..config import parse_override
    from ..run import not_a_file, safe_name
    from ..search.study import SETTINGS, SearchSettings, settings_from_study
    from ..search.study import search as run_search

    budget = parse_duration(time_budget)
    if resume is not None:
        if data or space or config or overrides or model or unlabeled or shots or track:
            raise GraftError("--resume continues a search with its saved settings; only "
                             "--trials, --time-budget and --workers may change")
        if not (resume / SETTINGS).is_file():
            raise GraftError(f"{str(resume)!r} is not a search folder (no {SETTINGS})")
        s = SearchSettings(data="", study="", trials=trials or 0, time_budget_s=budget,
                           workers=workers)
        run_search(s, resume, storage_url=storage, resume=True, quiet=quiet)
        typer.echo(str(resume / "best"))
        return
    if data is None:
        if not (study and storage):
            raise GraftError("give --data DIR to start a search, --resume SEARCH_DIR to go on, "
                             "or --study NAME --storage URL to join one")
        out = out or Path(f"search-{safe_name(study)}")
        s, sp = settings_from_study(storage, study, out, heartbeat)
        # a joining worker runs the study's space as stored (its lr ranges already centred)
        s.workers, s.trials, s.lr_find = workers, trials or s.trials, False
        out.mkdir(parents=True, exist_ok=True)
        tmp_space = out / "space.yaml"
        tmp_space.write_text(sp.to_yaml())
        run_search(s, out, space_file=tmp_space, storage_url=storage, quiet=quiet)
        typer.echo(str(out / "best"))
        return
    if out is None:
        out = Path("searches") / (study or "search")
    not_a_file(out)
    if (out / SETTINGS).is_file():
        raise GraftError(f"{str(out)!r} already holds a search; continue it with --resume "
                         f"{out} or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise GraftError(f"{str(out)!r} exists and is not empty; choose another --out")
    extra = dict(parse_override(o) for o in overrides or [])
    flags = {k: v for k, v in {"model.name": model, "data.val": val, "data.test": test,
                               "data.unlabeled": unlabeled, "data.shots": shots,
                               "data.unlabeled_rest": True if unlabeled_rest else None,
                               "tracking.backends": list(dict.fromkeys(track)) if track else None,
                               "tracking.uri": tracking_uri}.items()
             if v is not None}
    s = SearchSettings(data=data, study=study or out.resolve().name, metric=metric,
                       trials=trials or 20, time_budget_s=budget,
                       config=str(config) if config else None, overrides={**flags, **extra},
                       sampler=sampler, pruner=pruner, seed=seed, workers=workers,
                       default_trial=not no_default_trial, heartbeat_s=heartbeat,
                       lr_find=lr_find, objective=objective, robust_weight=robust_weight,
                       robust_corruptions=robust_corruptions, keep_weights=keep_weights)
    created = not out.exists()
    try:
        run_search(s, out, space_file=space, storage_url=storage, quiet=quiet)
    except GraftError:
        if created and not (out / SETTINGS).is_file():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    typer.echo(str(out / "best"))


def soup(
    search_dir: Path = typer.Argument(..., help="a graft search folder (its --out)"),
    out: Path | None = typer.Option(None, "--out", help="run directory to write (default: "
                                    "SEARCH_DIR/soup)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier soup there"),
    as_json: bool = typer.Option(False, "--json", help="print what meta.json's soup says"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Greedy soup of a search's trials (Wortsman et al. 2022): average the weights of the best
    ones while validation does not drop; written as an ordinary run directory."""

    from ..search.soup import soup as cook

    say = None if (quiet or as_json) else typer.echo
    r = cook(search_dir, out, overwrite=overwrite, progress=say)
    if as_json:
        from .. import run as rd

        typer.echo(rd.to_json(r))
        return
    typer.echo(f"soup of trials {', '.join(f'{n:04d}' for n in r['ingredients'])}: val "
               f"{r['monitor']} {r['val']:.4f} (best trial alone {r['best_trial_val']:.4f})")
    typer.echo(f"run directory: {r['out']}")


def lr_find(
    data: str = typer.Option(..., "--data", help="image folder, CSV manifest or text CSV"),
    model: str | None = typer.Option(None, "--model"),
    strategy: str | None = typer.Option(None, "--strategy", help="default: the config's"),
    start: float = typer.Option(1e-7, "--start", help="first learning rate"),
    end: float = typer.Option(1.0, "--end", help="last learning rate"),
    steps: int = typer.Option(100, "--steps", min=10, help="training steps"),
    out: Path = typer.Option(Path("lr_find"), "--out", help="folder for the plot and JSON"),
    config: Path | None = typer.Option(None, "-c", "--config", help="YAML config file"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    overrides: list[str] | None = typer.Argument(None, help="config overrides key=value"),
) -> None:
    """Learning-rate range test (Smith 2015): a suggested lr and a plot."""
    from ..config import build_config, parse_override
    from ..run import claim_outputs
    from ..search.lr_find import OUTPUT_NAMES, write
    from ..search.lr_find import lr_find as run_lr_find

    flags = {k: v for k, v in {"data.path": data, "model.name": model,
                               "strategy.name": strategy}.items() if v is not None}
    cfg = build_config(config, {**flags, **dict(parse_override(o) for o in overrides or [])})
    claim_outputs(out, list(OUTPUT_NAMES))  # before any work: a clash costs nothing
    r = run_lr_find(cfg, start=start, end=end, steps=steps, quiet=quiet)
    js, png = write(r, out)
    typer.echo(f"suggested lr for {r.strategy}: {r.suggestion:.2e} (steepest descent; minimum "
               f"loss at {r.min_loss_lr:.2e}; {r.stopped})")
    typer.echo(f"plot: {png}")
