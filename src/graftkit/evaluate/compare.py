"""Side-by-side comparison of run directories (``graft compare``).

Columns are small registered functions of a run's meta.json and metrics.json, so later features
(robustness, export) add theirs with :func:`column` without touching this module.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run as rd
from ..errors import GraftError
from .metrics import LOWER_IS_BETTER
from .report import _count, _duration, run_summary


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    value: Callable[[dict[str, Any]], Any]  # from a row context (see _context)
    fmt: Callable[[Any], str]
    better: str | None = None  # "high" | "low": the best value is highlighted


COLUMNS: list[Column] = []


def column(key: str, header: str, value: Callable[[dict[str, Any]], Any],
           fmt: Callable[[Any], str] = str, better: str | None = None) -> None:
    """Register a comparison column (later registrations with the same key replace it)."""
    COLUMNS[:] = [c for c in COLUMNS if c.key != key]
    COLUMNS.append(Column(key, header, value, fmt, better))


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}"


def _split_metric(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda ctx: (ctx["metrics"].get(ctx["split"]) or {}).get(key)


column("run", "run", lambda c: c["summary"]["name"])
column("model", "model", lambda c: c["summary"]["model"])
column("strategy", "strategy", lambda c: c["summary"]["strategy"])
column("trainable_params", "trained params", lambda c: c["summary"]["trainable_params"],
       lambda v: _count(v))
column("train_time_s", "train time", lambda c: c["summary"]["train_time_s"], _duration,
       better="low")
column("split", "split", lambda c: c["split"])
for _k, _h in [("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
               ("balanced_accuracy", "bal. acc."), ("roc_auc", "ROC-AUC"), ("log_loss", "log loss"),
               ("ece", "ECE"), ("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")]:
    column(_k, _h, _split_metric(_k), _num, "low" if _k in LOWER_IS_BETTER else "high")


def _robust(key: str) -> Callable[[dict[str, Any]], Any]:
    def get(ctx: dict[str, Any]) -> Any:
        from .report import robustness_results

        r = robustness_results(ctx["path"])
        if r is None:
            return None
        return (r.get("reference") or {}).get(key) if key in ("mce", "relative_mce") else r[key]
    return get


column("clean_accuracy", "clean acc. (robustness set)", _robust("clean_accuracy"), _num, "high")
column("mca", "mCA", _robust("mca"), _num, "high")
column("relative_robustness", "rel. robustness", _robust("relative_robustness"), _num, "high")
column("mce", "mCE", _robust("mce"), _num, "low")


def _expand(paths: list[Path]) -> list[Path]:
    """Run directories as given; a folder of runs (one level) expands to its runs."""
    out: list[Path] = []
    for p in paths:
        if (p / rd.META).is_file():
            out.append(p)
        elif p.is_dir() and (inner := sorted(q for q in p.iterdir() if (q / rd.META).is_file())):
            out += inner
        else:
            rd.check_run_dir(p)  # raises the usual one-line error
    if not out:
        raise GraftError("no run directories to compare")
    return out


def compare(paths: list[str | Path], split: str | None = None) -> tuple[list[Column], list[dict]]:
    """Rows (one per run) of raw values, and the columns that have a value in some row."""
    runs = _expand([Path(p) for p in paths])
    ctxs = []
    for p in runs:
        meta = rd.read_json(p / rd.META)
        metrics = rd.read_json(p / rd.METRICS) if (p / rd.METRICS).is_file() else {}
        ctxs.append({"path": p, "meta": meta, "metrics": metrics,
                     "summary": run_summary(p, meta)})
    if split is None:  # the test split when every run has one, else validation
        split = "test" if all("test" in c["metrics"] for c in ctxs) else "val"
    elif ctxs and not any(split in c["metrics"] for c in ctxs):
        raise GraftError(f"--split {split}: no run here was scored on a {split} split")
    rows = []
    for c in ctxs:
        c["split"] = split
        rows.append({col.key: col.value(c) for col in COLUMNS})
    cols = [col for col in COLUMNS if any(r[col.key] is not None for r in rows)]
    return cols, rows


def best_rows(col: Column, rows: list[dict]) -> set[int]:
    vals = [(i, r[col.key]) for i, r in enumerate(rows) if isinstance(r[col.key], (int, float))]
    if col.better is None or len(vals) < 2:
        return set()
    pick = max if col.better == "high" else min
    best = pick(v for _, v in vals)
    won = {i for i, v in vals if v == best}
    return set() if len(won) == len(vals) else won  # a tie everywhere singles nothing out


def to_markdown(cols: list[Column], rows: list[dict]) -> str:
    best = {c.key: best_rows(c, rows) for c in cols}
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join("---" if c.better is None else "---:" for c in cols) + "|"]
    for i, r in enumerate(rows):
        cells = [c.fmt(r[c.key]) for c in cols]
        cells = [f"**{v}**" if i in best[c.key] else v for c, v in zip(cols, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(cols: list[Column], rows: list[dict]) -> str:
    best = {c.key: best_rows(c, rows) for c in cols}
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for i, r in enumerate(rows):
        tds = "".join(
            f"<td{' class=best' if i in best[c.key] else ''}>{html.escape(c.fmt(r[c.key]))}</td>"
            for c in cols)
        body.append(f"<tr>{tds}</tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>graft compare</title><style>"
            "body{font:14px system-ui,sans-serif;margin:24px;color:#111827}"
            "table{border-collapse:collapse}th,td{padding:5px 12px;border-bottom:1px solid "
            "#e5e7eb;text-align:right}th:first-child,td:first-child{text-align:left}"
            "th{color:#6b7280;font-size:12px}td.best{font-weight:700;color:#16a34a}"
            "</style></head><body><h1 style='font-size:18px'>graft compare</h1><table><tr>"
            f"{head}</tr>{''.join(body)}</table><p style='color:#6b7280'>best value per column "
            "in green</p></body></html>\n")
