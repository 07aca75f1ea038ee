"""MODEL_CARD.md of an export bundle: data, model, training, metrics, calibration, robustness,
intended use and limitations, rendered from a Jinja2 template (``templates/MODEL_CARD.md.j2``).

Every number comes from the run directory (meta.json, metrics.json, data_report.json,
robustness/results.json) or from the export's own parity check; what differs between images and
texts (the model family, the input, what the preprocessing loses) from the run's modality
(``card_notes``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from .. import run as rd
from ..evaluate.report import robustness_results, run_summary
from . import light

FEW_TRAIN = 20  # training inputs per class below which the card warns
SMALL_EVAL = 200  # evaluation inputs below which the card stresses the interval


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` trials (95%)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _metric_rows(metrics: dict[str, Any], task: str) -> list[dict[str, Any]]:
    rows = []
    for split in ("val", "test"):
        m = metrics.get(split)
        if not m:
            continue
        if task == "classification":
            lo, hi = wilson(m["accuracy"], m["n"])
            rows.append({"split": split, "n": m["n"], "accuracy": m["accuracy"], "lo": lo,
                         "hi": hi, "macro_f1": m["macro_f1"],
                         "ece_before": m["uncalibrated"]["ece"], "ece_after": m["ece"],
                         "temperature": m["calibration"]["temperature"]})
        elif task == "multilabel":
            rows.append({"split": split, "n": m["n"], **{k: m[k] for k in (
                "macro_f1", "micro_f1", "mAP", "subset_accuracy")},
                "macro_f1_05": m["at_0.5"]["macro_f1"], "ece_before": m["at_0.5"]["ece"],
                "ece_after": m["ece"]})
        else:
            rows.append({"split": split, "n": m["n"], "mae": m["mae"], "rmse": m["rmse"],
                         "r2": m["r2"]})
    return rows


def _counts(run_path: Path, meta: dict[str, Any]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Inputs per split and class (data_report.json), or per split only (column "all")."""
    f = run_path / rd.DATA_REPORT
    counts = (rd.read_json(f) if f.is_file() else {}).get("counts") or {}
    if meta["task"] == "classification" and counts and all(isinstance(v, dict)
                                                           for v in counts.values()):
        return counts, list(meta["classes"])
    per_split = (meta.get("data") or {}).get("counts") or {}
    return {s: {"all": int(n)} for s, n in per_split.items()}, ["all"]


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def limitations(meta: dict[str, Any], bundle: dict[str, Any], rows: list[dict[str, Any]],
                counts: dict[str, dict[str, int]], robustness: dict[str, Any] | None,
                noun: str, notes: dict[str, str]) -> list[str]:
    """Generic and data-specific limitations, as Markdown sentences; ``noun`` and ``notes``: the
    modality's (``card_notes``)."""
    cal, parity = bundle.get("calibration") or {}, bundle["parity"]
    out = []
    classification = meta["task"] == "classification"
    if classification:
        names = ", ".join(f"`{c}`" for c in meta["classes"])
        out.append(f"It always answers one of the {len(meta['classes'])} classes it was trained "
                   f"on ({names}), also for {noun}s that belong to none of them: there is no "
                   f"\"unknown\" answer, and a confident probability does not mean the {noun} is "
                   "in scope.")
    main = next((r for r in rows if r["split"] == "test"), rows[0] if rows else None)
    if main is not None and classification:
        few = "only " if main["n"] < SMALL_EVAL else ""
        out.append(f"The {main['split']} split has {few}{main['n']} {noun}s: the accuracy of "
                   f"{_pct(main['accuracy'])} has a 95% interval of about {_pct(main['lo'])} to "
                   f"{_pct(main['hi'])} (Wilson), so differences of a few points between models "
                   "are within noise.")
    if not any(r["split"] == "test" for r in rows):
        out.append("There is no test split: the validation split also chose the best epoch and "
                   "fitted the calibration, so its figures are optimistic; measure on held-out "
                   "data of your own (`graft evaluate RUN_DIR --data ...`).")
    train = counts.get("train") or {}
    if classification and len(train) > 1 and "all" not in train:
        few_cls = [f"`{c}` ({n})" for c, n in train.items() if n < FEW_TRAIN]
        if few_cls:
            out.append(f"Few training {noun}s for {', '.join(few_cls)}: expect weaker and less "
                       "stable results on those classes.")
        lo, hi = min(train.values()), max(train.values())
        if lo and hi / lo > 3:
            out.append(f"The training classes are imbalanced (largest/smallest = {hi / lo:.1f}); "
                       "accuracy hides errors on the rare classes, check macro-F1 and the "
                       "per-class figures in the run's report.")
    out.append(notes["cut"])
    source = (meta.get("data") or {}).get("source")
    out.append(f"It learned from `{source}`: {notes['shift']} can be classified less accurately "
               "than the figures above say. Not for decisions about people or safety-critical "
               "use without validation on representative data.")
    if classification:
        out.append(f"Probabilities are calibrated by one temperature (T = "
                   f"{cal.get('temperature', 1.0):.3f}) fitted on the validation split; the fit "
                   "is itself uncertain on a small split and does not carry over to shifted data.")
        if cal.get("threshold") is not None:
            out.append(f"Decisions use the threshold P(`{cal['positive_class']}`) >= "
                       f"{cal['threshold']:.4f}, chosen for {cal['criterion']} on validation: "
                       "a different operating point needs `graft calibrate` and a new export.")
        stale = [r["split"] for r in rows
                 if not math.isclose(r["temperature"], cal.get("temperature", 1.0))]
        if stale:
            out.append(f"The {', '.join(stale)} metrics above were measured with an earlier "
                       "calibration than the one in this bundle (the run was recalibrated); "
                       "rerun `graft evaluate` for current figures.")
    if robustness is None:
        out.append(f"Robustness to {notes['perturbations']} was not measured for this run.")
    elif not math.isnan(robustness["relative_robustness"]):
        out.append(f"Under synthetic {robustness.get('kind', 'corruptions')} its accuracy falls "
                   f"to {_pct(robustness['mca'])} on average "
                   f"({_pct(robustness['relative_robustness'])} of the clean accuracy): expect "
                   f"degraded results on {notes['degraded']}.")
    out.append(f"The export was checked against the eager torch model on {parity['n']} {noun}s "
               f"with {parity['backend']}; other runtimes, execution providers (GPU) or "
               "quantised versions were not checked.")
    return out


def _worst(robustness: dict[str, Any] | None, k: int = 3) -> list[tuple[str, float]]:
    if not robustness:
        return []
    entries = sorted(robustness["corruptions"].items(), key=lambda kv: kv[1]["mean"])
    return [(name, e["mean"]) for name, e in entries[:k]]


def _duration(s: Any) -> str:
    if s is None:
        return "unknown"
    s = float(s)
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def _md(text: Any) -> str:
    """Safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_card(run: Any, bundle: dict[str, Any], bundle_name: str) -> str:
    """MODEL_CARD.md for ``bundle`` (its parity and model file already filled in), to be
    written to a folder named ``bundle_name``."""
    meta, noun = run.meta, run.modality.noun
    notes = run.modality.card_notes(bundle["preprocessing"])
    rows = _metric_rows(run.metrics, meta["task"])
    counts, columns = _counts(run.path, meta)
    robustness = robustness_results(run.path)
    env = Environment(loader=PackageLoader("graftkit.export", "templates"), autoescape=False,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                      undefined=StrictUndefined)
    env.filters.update(pct=_pct, duration=_duration, md=_md)
    return env.get_template("MODEL_CARD.md.j2").render(
        b=bundle, bundle_name=bundle_name, meta=meta, run=run_summary(run.path, meta), rows=rows,
        counts=counts, columns=columns, robustness=robustness, worst=_worst(robustness),
        noun=noun, a_noun=f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}", notes=notes,
        origins=run.modality.model_origin(meta["model"]["name"] or ""),
        limitations=limitations(meta, bundle, rows, counts, robustness, noun, notes),
        bundle_json=light.BUNDLE_JSON, generated=time.strftime("%Y-%m-%d %H:%M:%S"))
