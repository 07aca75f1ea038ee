"""``graft soup SEARCH_DIR``: a greedy soup of a search's trials (Wortsman et al. 2022, "Model
soups", Algorithm 1), written as an ordinary run directory.

The ingredients are the finished trials whose weights can be averaged with the best one: the same
model, classes and task, and the same parameter names and shapes (every trial of a search starts
from the same pretrained weights and the same seeded head). In order of their validation score,
best first, each is added to the soup (a uniform average of the weights kept so far) only if the
soup's validation score does not drop; the first is the best trial alone, so the soup is never
worse than it on validation. The soup's run directory is the best trial's, with the averaged
weights, its temperature refitted on validation, every split scored again, a fresh report and
drift reference, and ``soup`` in ``meta.json`` (every trial tried, its score and whether it
stayed). It has no training state or history of its own: ``--resume`` does not apply.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import run as rd
from ..errors import GraftError
from ..evaluate.metrics import LOWER_IS_BETTER, is_better

TRIALS = "trials"


@dataclass
class Trial:
    path: Path
    number: int
    value: float
    meta: dict[str, Any]


def trials(search: Path) -> tuple[list[Trial], list[dict[str, Any]]]:
    """The finished trials of a search folder, best first (by each trial's monitored metric),
    and the ones left out with why."""
    folder = search / TRIALS
    if not folder.is_dir():
        raise GraftError(f"{str(search)!r} is not a search folder (no {TRIALS}/); give the --out "
                         "of a graft search")
    done, skipped = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        meta = rd.read_json(d / rd.META) if (d / rd.META).is_file() else {}
        value = meta.get("best_value")
        why = ("not finished" if meta.get("status") != "completed" else
               "no weights" if not (d / rd.WEIGHTS).is_file() else
               "no finite validation score" if not isinstance(value, (int, float))
               or not math.isfinite(value) else None)
        if why:
            skipped.append({"trial": d.name, "why": why})
            continue
        done.append(Trial(d, int(d.name) if d.name.isdigit() else len(done), float(value), meta))
    if len(done) < 2:
        freed = sum(s["why"] == "no weights" for s in skipped)
        raise GraftError(f"a soup needs the weights of two finished trials or more; "
                         f"{str(folder)!r} has {len(done)}" + (
                             f" ({freed} finished trials' weights were freed: search with "
                             "--keep-weights)" if freed else ""))
    monitors = {t.meta.get("monitor") for t in done}
    if len(monitors) > 1:
        raise GraftError(f"the trials monitored different metrics ({', '.join(map(str, monitors))})"
                         "; a soup needs one")
    lower = done[0].meta.get("monitor") in LOWER_IS_BETTER
    done.sort(key=lambda t: (t.value if lower else -t.value, t.number))
    return done, skipped


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def compatible(best: Trial, other: Trial) -> str | None:
    """Why ``other``'s weights cannot be averaged with ``best``'s (None: they can)."""
    for key, what in ((("model", "name"), "model"), (("classes",), "classes"),
                      (("task",), "task"), (("modality",), "modality")):
        a, b = best.meta, other.meta
        for k in key:
            a, b = (a or {}).get(k), (b or {}).get(k)
        if a != b:
            return f"another {what} ({b})"
    if _shapes(best.path / rd.WEIGHTS) != _shapes(other.path / rd.WEIGHTS):
        return "other parameter names or shapes"
    return None


def _average(sums: dict[str, torch.Tensor], n: int, first: dict[str, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
    return {k: (sums[k] / n).to(first[k].dtype) if first[k].is_floating_point() else first[k]
            for k in first}


def soup(search: Path, out: Path | None = None, overwrite: bool = False,
         progress: Any = None) -> dict[str, Any]:
    """Cook the greedy soup of the search in ``search`` into ``out`` (default
    ``SEARCH/soup``); returns what ``meta.json``'s ``soup`` says."""
    from safetensors.torch import load_file, save_file

    from ..inference import LoadedRun, outputs, run_split

    say = progress or (lambda _m: None)
    ranked, skipped = trials(search)
    best = ranked[0]
    monitor = best.meta.get("monitor") or "accuracy"
    out = out or search / "soup"
    rd.check_out_dir(out, overwrite, resumable=False)
    run = LoadedRun(best.path)
    items, _, _ = run_split(run, "val")  # the data as every trial split it
    model = run.model

    task = run.meta["task"]

    def score(weights: dict[str, torch.Tensor]) -> float:
        """The monitored val metric, as training scored each epoch: outputs not temperature-
        scaled, a multi-label run's through sigmoids, a regression's in the targets' units."""
        from ..evaluate.analysis import analyze
        from ..evaluate.calibration import Calibration

        model.load_state_dict(weights, strict=True)
        logits, targets = outputs(run, items)
        m = analyze(logits, targets, task, run.meta["classes"],
                    Calibration(multilabel=task == "multilabel"),
                    target_stats=run.meta.get("target_stats")).metrics
        return float(m[monitor])

    first = load_file(str(best.path / rd.WEIGHTS))
    sums = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    kept, current = [best.number], score(first)
    tried = [{"trial": best.number, "value": best.value, "soup_val": current, "kept": True}]
    say(f"  trial {best.number:04d} ({monitor} {best.value:.4f}): the soup starts with it, "
        f"val {monitor} {current:.4f}")
    for t in ranked[1:]:
        why = compatible(best, t)
        if why:
            skipped.append({"trial": t.path.name, "why": why})
            continue
        w = load_file(str(t.path / rd.WEIGHTS))
        trial_sums = {k: sums[k] + w[k].double() if first[k].is_floating_point() else sums[k]
                      for k in first}
        value = score(_average(trial_sums, len(kept) + 1, first))
        # Algorithm 1 keeps an ingredient when held-out accuracy does not drop
        stay = value == current or is_better(value, current, monitor)
        tried.append({"trial": t.number, "value": t.value, "soup_val": value, "kept": stay})
        say(f"  trial {t.number:04d} ({monitor} {t.value:.4f}): soup val {value:.4f} -> "
            f"{'kept' if stay else 'left out'}")
        if stay:
            sums, current = trial_sums, value
            kept.append(t.number)
    weights = _average(sums, len(kept), first)
    info = {"from": str(search.resolve()), "monitor": monitor, "ingredients": kept,
            "val": current, "best_trial": best.number, "best_trial_val": tried[0]["soup_val"],
            "tried": tried, "skipped": skipped}
    _write(best.path, out, weights, info, save_file)
    return {**info, "out": str(out)}


def _write(best: Path, out: Path, weights: dict[str, torch.Tensor], info: dict[str, Any],
           save_file: Any) -> None:
    """The soup's run directory: a copy of the best trial's, built beside ``out`` and put in its
    place once complete."""
    build = rd.sibling(out, "soup")
    try:
        _build(best, build, weights, info, save_file)
    except BaseException:  # a half-built soup is nobody's run
        shutil.rmtree(build, ignore_errors=True)
        raise
    if out.exists():
        rd.replace_dir(out, build)
    else:
        build.rename(out)


def _build(best: Path, build: Path, weights: dict[str, torch.Tensor], info: dict[str, Any],
           save_file: Any) -> None:
    from ..inference import LoadedRun, calibrate, ensure_reference, evaluate, run_split

    shutil.copytree(best, build, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "checkpoints", rd.HISTORY, rd.EVAL, rd.ROBUSTNESS, "reference.json", "tensorboard"))
    save_file(weights, str(build / rd.WEIGHTS))
    meta = rd.read_json(build / rd.META)
    meta.pop("tracking", None)  # the trial's tracker runs are not the soup's
    meta.update(status="completed", soup=info, best_value=info["val"])
    rd.write_json(build / rd.META, meta)
    run = LoadedRun(build)
    if run.meta["task"] != "regression":  # the soup's own temperature (threshold), fitted on val
        calibrate(run)
    metrics = rd.read_json(best / rd.METRICS)
    spec = run.modality.discover(run.config.data, run.config.task)
    for split in spec.splits:
        metrics[split] = _scores(run, run_split(run, split)[0])
    rd.write_json(build / rd.METRICS, metrics)
    for split in ("val", "test"):
        if split in spec.splits:
            evaluate(run, None, split)
    ensure_reference(run)


def _scores(run: Any, items: list[tuple[str, float]]) -> dict[str, Any]:
    from ..evaluate.analysis import analyze
    from ..inference import outputs

    logits, targets = outputs(run, items)
    a = analyze(logits, targets, run.meta["task"], run.meta["classes"], run.calibration,
                run.config.train.topk, run.meta.get("target_stats"))
    return {"loss": a.metrics.get("loss"), **a.metrics}
