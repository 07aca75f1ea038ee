"""What a search leaves: the leaderboard, the best run at ``best/``, plots and an HTML summary."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import shutil
import warnings
from pathlib import Path
from typing import Any

from .. import run as rd
from .settings import SearchSettings
from .space import Space

# what a non-best trial need not keep: its weights, resumable state and WiSE-FT's two ends
WEIGHT_FILES = (rd.WEIGHTS, rd.STATE, rd.PROBE, rd.FINETUNED)


def leaderboard(study: Any, space: Space) -> list[dict[str, Any]]:
    """One row per trial, best first (finished trials by metric, then pruned, failed, running).
    A trial that drew another's config was not trained: its state is ``duplicate`` and its note
    names that trial (see ``study.Duplicate``)."""
    keys = space.keys()
    trials = study.get_trials(deepcopy=False)
    robust = any("mca" in t.user_attrs for t in trials)  # the robust objective's two parts
    rows = []
    for t in trials:
        config = t.user_attrs.get("config") or {}
        note = t.user_attrs.get("error") or t.user_attrs.get("note") or ""
        if t.user_attrs.get("graft_default"):
            note = ("graft default; " + note).rstrip("; ")
        retry_of = t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial"))
        if retry_of is not None:
            note = (f"retry of trial {retry_of}; " + note).rstrip("; ")
        state = t.state.name.lower()
        if t.user_attrs.get("duplicate_of") is not None and state == "fail":
            state = "duplicate"
        elif state == "fail" and not note:
            note = "its worker stopped (no heartbeat); re-queued"
        parts = {k: t.user_attrs.get(k, "") for k in ("clean", "mca")} if robust else {}
        rows.append({"trial": t.number, "state": state, "value": t.value,
                     "seconds": round(float(t.user_attrs.get("seconds", 0.0)), 1), **parts,
                     **{k: config.get(k, "") for k in keys}, "note": note,
                     "run_dir": t.user_attrs.get("run_dir", "")})
    order = {"complete": 0, "pruned": 1, "fail": 2, "duplicate": 4}
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows.sort(key=lambda r: (order.get(r["state"], 3),
                             sign * r["value"] if r["value"] is not None else 0, r["trial"]))
    return rows


def write_leaderboard(rows: list[dict[str, Any]], path: Path, metric: str) -> None:
    with path.open("w", newline="") as f:
        if not rows:
            return
        fields = [metric if k == "value" else k for k in rows[0]]
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow(["" if v is None else v for v in r.values()])
    rd.usual_mode(path)


def materialize_best(study: Any, out: Path, keep_weights: bool = False
                     ) -> tuple[Any, Path | None]:
    """Copy the best finished trial's run to ``out/best`` (if this machine has it) and free the
    weights and checkpoints of the other finished trials (their metrics and history stay;
    ``keep_weights``: their ``model.safetensors`` stays too, for ``graft soup``)."""
    try:
        best = study.best_trial
    except ValueError:
        return None, None
    src = Path(best.user_attrs.get("run_dir", ""))
    dst = out / "best"
    if not (src / rd.META).is_file():
        return best, None  # run by a worker on another machine: it has the run
    marker = dst / "search_trial.json"
    if not (marker.is_file() and rd.read_json(marker).get("trial") == best.number):
        tmp = out / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        rd.write_json(tmp / "search_trial.json", {"study": study.study_name,
                                                  "trial": best.number, "value": best.value,
                                                  "params": best.user_attrs.get("config")})
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        _report(dst)
    for t in study.get_trials(deepcopy=False):
        d = Path(t.user_attrs.get("run_dir", ""))
        if t.number != best.number and t.state.name != "RUNNING" and d.is_dir():
            for name in WEIGHT_FILES:
                if not (keep_weights and name == rd.WEIGHTS):
                    (d / name).unlink(missing_ok=True)
    return best, dst


def _report(run_dir: Path) -> None:
    """Trials skip the HTML report to save time; the best run gets its own."""
    from ..inference import LoadedRun, evaluate

    try:
        evaluate(LoadedRun(run_dir), None, split="val", quiet=True)
    except Exception as e:  # the run itself is fine; say so rather than lose the search
        from ..train.progress import console

        console.print(f"[yellow]warning:[/] the best run's report failed: {e}", highlight=False)


def plots(study: Any, out: Path) -> dict[str, Path]:
    """Optimization history, parameter importances, parallel coordinates (Optuna's matplotlib
    plots); each is skipped with a note when the study is too small for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    made = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    todo = [("optimization_history", ovm.plot_optimization_history, 1),
            ("param_importances", ovm.plot_param_importances, 3),
            ("parallel_coordinate", ovm.plot_parallel_coordinate, 2)]
    for name, fn, need in todo:
        if len(complete) < need:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = fn(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances with no parameter shared by the finished trials
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made[name] = path
    return made


def summary_html(study: Any, rows: list[dict[str, Any]], s: SearchSettings, made: dict[str, Path],
                 best_dir: Path | None, out: Path) -> Path:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("graftkit.search", "templates"),
                             autoescape=True)
    images = {k: base64.b64encode(p.read_bytes()).decode() for k, p in made.items()}
    states = {st: sum(r["state"] == st for r in rows)
              for st in ("complete", "pruned", "fail", "duplicate")}
    html = env.get_template("summary.html.j2").render(
        s=s, study=study.study_name, rows=rows, images=images, states=states,
        label=s.metric if s.objective == "clean" else "objective",
        best=rows[0] if rows and rows[0]["state"] == "complete" else None,
        best_dir=best_dir, keys=[k for k in rows[0] if k not in (
            "trial", "state", "value", "seconds", "note", "run_dir")] if rows else [],
        when=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        total_s=sum(r["seconds"] for r in rows))
    path = out / "summary.html"
    path.write_text(html)
    rd.usual_mode(path)
    return path


def finish(study: Any, space: Space, s: SearchSettings, out: Path, quiet: bool = False
           ) -> dict[str, Any]:
    rows = leaderboard(study, space)
    label = s.metric if s.objective == "clean" else "objective"
    write_leaderboard(rows, out / "leaderboard.csv", label)
    best, best_dir = materialize_best(study, out, s.keep_weights)
    made = plots(study, out)
    html = summary_html(study, rows, s, made, best_dir, out)
    result = {"study": study.study_name, "objective": label, "trials": len(rows),
              "states": {st: sum(r["state"] == st for r in rows)
                         for st in ("complete", "pruned", "fail", "duplicate", "running",
                                    "waiting")},
              "best_trial": best.number if best else None,
              "best_value": best.value if best else None,
              "best_params": best.user_attrs.get("config") if best else None,
              "best_dir": str(best_dir) if best_dir else None,
              "default_value": next((r["value"] for r in sorted(rows, key=lambda r: r["trial"])
                                     if "graft default" in r["note"]
                                     and r["state"] == "complete"), None),
              "leaderboard": str(out / "leaderboard.csv"), "summary": str(html)}
    rd.write_json(out / "result.json", result)
    if not quiet:
        _print(rows, label, result, best_dir, best)
    return result


def _print(rows: list[dict[str, Any]], metric: str, result: dict[str, Any],
           best_dir: Path | None, best: Any) -> None:
    from rich.table import Table

    from ..train.progress import console

    keys = [k for k in rows[0] if k not in ("trial", "state", "value", "seconds", "note",
                                            "run_dir")] if rows else []
    table = Table(title="leaderboard (top 10)")
    for col in ["trial", "state", metric, "s", *keys, "note"]:
        table.add_column(col, overflow="fold")
    for r in rows[:10]:
        v = "" if r["value"] is None else f"{r['value']:.4f}"
        table.add_row(str(r["trial"]), r["state"], v, f"{r['seconds']:.0f}",
                      *[str(r[k]) if not isinstance(r[k], float) else f"{r[k]:.3g}"
                        for k in keys], r["note"][:60])
    console.print(table)
    st = result["states"]
    dup = f", {st['duplicate']} duplicate (not trained)" if st["duplicate"] else ""
    console.print(f"{result['trials']} trials: {st['complete']} complete, {st['pruned']} pruned, "
                  f"{st['fail']} failed{dup}", highlight=False)
    if best is not None:
        where = best_dir or f"{best.user_attrs.get('run_dir')} on {best.user_attrs.get('worker')}"
        console.print(f"best: trial {best.number}, {metric} {best.value:.4f} -> {where}",
                      highlight=False)
    console.print(f"summary: {result['summary']}", highlight=False)

