"""Write an evaluation folder: metrics.json, the plots as PNG, and a self-contained report.html.

    RUN_DIR/eval/<name>/
      metrics.json      every number the report shows (and more)
      *.png             the figures (also embedded in the page)
      report.html       one file: opens from disk, no server, no network

The page is a Jinja2 template; images are embedded as data URIs so the file can be mailed or
moved on its own. The report renders what it is given: the analysis, and the gallery of the worst
examples as the run's modality shows them (``gallery``: thumbnails and Grad-CAM overlays drawn
with the model in memory, or the texts); it imports neither explain nor robustness.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from .. import run as rd
from . import plots
from .analysis import Analysis
from .metrics import REPORT_METRICS, is_better

REPORT = rd.REPORT
# (worst examples, eval folder) -> the examples with what to show of each ("thumb", "cam",
# "label" for an image; "text" for a text)
Gallery = Callable[[list[dict[str, Any]], Path], list[dict[str, Any]]]


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _history(run_path: Path) -> list[dict[str, Any]]:
    import json

    f = run_path / rd.HISTORY
    if not f.is_file():
        return []
    return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]


def run_summary(run_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What a report or a comparison says about the run itself (not its metrics)."""
    hist = _history(run_path)
    return {
        "run": str(run_path), "name": run_path.name, "model": meta["model"]["name"],
        "arch": meta["model"]["arch"], "strategy": meta["strategy"],
        "stages": meta.get("stages", []), "task": meta["task"],
        "classes": len(meta.get("classes") or []) or None,
        "total_params": meta["model"].get("total_params"),
        "trainable_params": max((r.get("trainable_params", 0) for r in hist), default=None),
        "train_time_s": meta.get("train_time_s"), "epochs": len(hist),
        "best_epoch": meta.get("best_epoch"), "monitor": meta.get("monitor"),
        "status": meta.get("status"), "device": meta.get("device"),
        "precision": meta.get("precision"), "created": meta.get("created"),
        "data_source": (meta.get("data") or {}).get("source"),
        "semi": _semi(meta, hist),
        "selection": _selection(run_path, meta),
    }


def _selection(run_path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """``--model auto``'s ranking (model_selection.json), when the run chose its backbone."""
    sel = meta.get("model_selection")
    f = run_path / (sel or {}).get("file", "")
    return rd.read_json(f) if sel and f.is_file() else None


def _semi(meta: dict[str, Any], hist: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A semi-supervised run's pool and, per self-training round, what was accepted and how
    precise it was; for FixMatch, per epoch, the share of the pool that taught."""
    semi = meta.get("semi")
    if not semi:
        return None
    fixmatch = [{"epoch": r["epoch"], "stage": r["stage"], "accepted": r["unlabeled_accepted"],
                 "precision": r.get("pseudo_precision"), "val": r.get(f"val_{meta['monitor']}")}
                for r in hist if "unlabeled_accepted" in r]
    val_by_stage: dict[str, float] = {}
    for r in hist:  # each round's best validation score
        v = r.get(f"val_{meta['monitor']}")
        if isinstance(v, (int, float)):
            best = val_by_stage.get(r["stage"])
            keep = best is None or is_better(v, best, meta["monitor"])  # (loss: the lowest)
            val_by_stage[r["stage"]] = v if keep else best
    rounds = [{**r, "val": val_by_stage.get(r.get("stage", ""))} for r in semi.get("rounds", [])]
    first = (meta.get("stages") or [{}])[0].get("name")
    return {**semi, "rounds": rounds, "fixmatch": fixmatch,
            "labels_only_val": val_by_stage.get(first) if rounds else None}


ROBUSTNESS = rd.ROBUSTNESS  # RUN_DIR/robustness/: results.json + figures (graft robustness)


def robustness_results(run_path: Path) -> dict[str, Any] | None:
    f = run_path / ROBUSTNESS / rd.ROBUSTNESS_RESULTS
    return rd.read_json(f) if f.is_file() else None


def _robustness_context(run_path: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The run's corruption benchmark, when it was measured on the data this report is about."""
    r = robustness_results(run_path)
    if not r or str(r.get("data")) != str(info.get("data")) or r.get("split") != info.get("split"):
        return None
    figs = {p.stem: _data_uri(p) for p in sorted((run_path / ROBUSTNESS).glob("*.png"))}
    worst = sorted(r["corruptions"].items(), key=lambda kv: kv[1]["mean"])[:5]
    table = r.get("examples_table")  # the examples as an HTML table rather than their PNG
    if table:
        figs.pop("examples", None)
    return {**r, "figs": figs, "worst": worst, "text": r.get("kind") == "perturbations",
            "examples_table": table}


def _figures(a: Analysis, out: Path, hist: list[dict[str, Any]], monitor: str | None,
             best_epoch: int | None) -> dict[str, Path]:
    m, figs = a.metrics, {}
    if hist and monitor:
        figs["training_curves"] = plots.training_curves(hist, monitor, best_epoch,
                                                        out / "training_curves.png")
    if a.task == "regression":
        assert a.pred is not None
        figs["regression"] = plots.regression_scatter(a.pred, a.targets, out / "regression.png")
        return figs
    assert a.probs is not None and a.probs_raw is not None
    if a.task == "multilabel":
        return {**figs, **_multilabel_figures(a, out)}
    correct = a.correct
    raw_pred = a.probs_raw.argmax(1)
    raw_conf = a.probs_raw[np.arange(len(raw_pred)), raw_pred]
    t = m["calibration"]["temperature"]
    figs["reliability"] = plots.reliability(
        [("before (T = 1)", raw_conf, raw_pred == a.targets, m["uncalibrated"]["ece"]),
         (f"after (T = {t:.3f})", a.confidence, correct, m["ece"])], out / "reliability.png")
    figs["confusion_counts"] = plots.confusion_matrix(m["confusion_matrix"], a.classes,
                                                      out / "confusion_matrix.png")
    figs["confusion_normalized"] = plots.confusion_matrix(
        m["confusion_matrix"], a.classes, out / "confusion_matrix_normalized.png", normalize=True)
    figs["roc_pr"] = plots.roc_pr(a.probs, a.targets, a.classes, out / "roc_pr.png")
    figs["per_class_f1"] = plots.per_class_f1(m["per_class"], out / "per_class_f1.png")
    figs["confidence"] = plots.confidence_histogram(a.confidence, correct,
                                                    out / "confidence_histogram.png")
    return figs


def _multilabel_figures(a: Analysis, out: Path) -> dict[str, Path]:
    """Reliability of every (example, label) decision pooled, before (0.5, T = 1) and after
    (tuned thresholds, the temperature); per-label F1; the per-example confidence."""
    assert a.probs is not None and a.probs_raw is not None and a.pred is not None
    m, y = a.metrics, a.targets.astype(bool).ravel()

    def pooled(p: np.ndarray, decided: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = decided.ravel()
        return np.where(d, p.ravel(), 1 - p.ravel()), d == y

    t = m["calibration"]["temperature"]
    figs = {"reliability": plots.reliability(
        [("before (0.5, T = 1)", *pooled(a.probs_raw, a.probs_raw >= 0.5), m["at_0.5"]["ece"]),
         (f"after (tuned, T = {t:.3f})", *pooled(a.probs, a.pred), m["ece"])],
        out / "reliability.png")}
    figs["per_class_f1"] = plots.per_class_f1(m["per_label"], out / "per_class_f1.png")
    figs["confidence"] = plots.confidence_histogram(a.confidence, a.correct,
                                                    out / "confidence_histogram.png")
    return figs


# (label, metrics key, format) shown in the summary card, when present.
SUMMARY_KEYS = {
    "classification": [("accuracy", "accuracy"), ("macro-F1", "macro_f1"),
                       ("balanced accuracy", "balanced_accuracy"), ("ROC-AUC", "roc_auc"),
                       ("ECE", "ece"), ("log loss", "log_loss")],
    "regression": [("MAE", "mae"), ("RMSE", "rmse"), ("R²", "r2")],
    "multilabel": [("macro-F1", "macro_f1"), ("micro-F1", "micro_f1"), ("mAP", "mAP"),
                   ("subset accuracy", "subset_accuracy"), ("ECE", "ece")],
}
TABLE_KEYS = list(REPORT_METRICS)


def write_eval(out: Path, a: Analysis, run_path: Path, meta: dict[str, Any],
               info: dict[str, Any], top_losses: int = 12, gallery: Gallery | None = None
               ) -> dict[str, Any]:
    """Write ``out``/metrics.json, the PNGs and report.html; returns the metrics written."""
    out.mkdir(parents=True, exist_ok=True)
    summary = run_summary(run_path, meta)
    metrics = {**a.metrics, **info}
    rd.write_json(out / rd.METRICS, metrics)
    hist = _history(run_path)
    figs = _figures(a, out, hist, summary["monitor"], summary["best_epoch"])
    examples = [dict(ex) for ex in a.top_losses(top_losses)] if a.task != "regression" else []
    shown = gallery(examples, out) if gallery else [{**ex, "text": ex["item"]} for ex in examples]
    env = Environment(loader=PackageLoader("graftkit.evaluate", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = _num
    env.filters["count"] = _count
    env.filters["duration"] = _duration
    page = env.get_template("report.html.j2").render(
        title=f"{run_path.name} · {info.get('split', '')}", run=summary, m=metrics,
        info=info, figs={k: _data_uri(v) for k, v in figs.items()}, gallery=shown,
        summary_keys=[(lbl, k) for lbl, k in SUMMARY_KEYS[a.task] if metrics.get(k) is not None],
        table_keys=[k for k in TABLE_KEYS if isinstance(metrics.get(k), (int, float))],
        generated=time.strftime("%Y-%m-%d %H:%M:%S"), versions=meta.get("versions", {}),
        robustness=_robustness_context(run_path, info),
        escape=html.escape,
    )
    (out / REPORT).write_text(page, encoding="utf-8")
    return metrics


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _count(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f}{unit}"
    return f"{int(v)}"


def _duration(s: Any) -> str:
    if s is None:
        return "—"
    s = float(s)
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"
