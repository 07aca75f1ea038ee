"""graft search on caltech101_10_160 (issue: AutoML): 20 trials of the shipped search space on
this machine's CPU cores, with caching and pruning, against graft's default configuration.

Records the wall time of the whole search (the target: under 20 minutes on 2 cores), the best
validation accuracy, that of graft's default config (trial 0 of the study, trained the same way,
so the two are side by side in one run) and the best trial other than the default, the trial
states (complete / pruned / failed) and the time per strategy. The feature cache starts empty
(a temporary GRAFT_CACHE_DIR), so the first linear-probe trial pays for the features.

    python benchmarks/search.py [--trials 20] [--data caltech101_10_160] [--workers 1]
    python benchmarks/search.py --from-journal SEARCH_DIR   # record a search that was stopped
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import DATA_DIR, write_result


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--data", default="caltech101_10_160")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", default=None, help="keep the search folder here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per trial "
                    "(default: torch's, one per core)")
    ap.add_argument("--from-journal", default=None, help="summarise the journal of a search "
                    "folder (kept with --keep) that was stopped before it finished")
    args = ap.parse_args()
    if args.from_journal:
        return from_journal(Path(args.from_journal), args)

    from graftkit.search.study import SearchSettings, search

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = str(Path(tmp) / "cache")
        out = Path(args.keep) if args.keep else Path(tmp) / "search"
        s = SearchSettings(data=str(DATA_DIR / args.data), study=f"bench-{args.data}",
                           trials=args.trials, workers=args.workers,
                           overrides={"train.threads": args.threads} if args.threads else {})
        load_before = load_average()
        t0 = time.perf_counter()
        result = search(s, out)
        wall = time.perf_counter() - t0
        load_after = load_average()
        import optuna
        import yaml

        from graftkit.search.results import leaderboard
        from graftkit.search.space import parse_space
        from graftkit.search.storage import open_storage

        space = parse_space(yaml.safe_load((out / "space.yaml").read_text()))
        study = optuna.load_study(study_name=s.study, storage=open_storage(None, out))
        rows = leaderboard(study, space)
    per_strategy: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "seconds": 0.0})
    for r in rows:
        name = r.get("strategy.name") or "linear_probe (default)"
        per_strategy[name]["n"] += 1
        per_strategy[name]["seconds"] += r["seconds"]
    searched = [r for r in rows if r["state"] == "complete" and "graft default" not in r["note"]]
    best_searched = max((r["value"] for r in searched), default=None)
    default = result["default_value"]
    verdict = (result["best_value"] > default or (result["best_value"] == default
                                                   and default >= 0.97))
    summary = {
        "data": args.data, "trials": args.trials, "workers": args.workers,
        "threads": args.threads,
        "wall_s": wall, "target_wall_s": 1200, "load_average_before": load_before,
        "load_average_after": load_after,
        "best_value": result["best_value"], "best_params": result["best_params"],
        "default_value": default, "best_searched_value": best_searched,
        "beats_or_equals_default": bool(verdict),
        "states": result["states"], "per_strategy": dict(per_strategy),
        "rows": [{k: v for k, v in r.items() if k != "run_dir"} for r in rows],
    }
    print(f"{args.data}: {args.trials} trials in {wall:.0f} s (load average {load_before:.1f} "
          f"-> {load_after:.1f}); best val accuracy {result['best_value']:.4f}, graft default "
          f"{default:.4f}, best searched trial {best_searched}; states {result['states']}")
    print(f"written to {write_result('search', summary)}")


def from_journal(out: Path, args: argparse.Namespace) -> None:
    """The trials a stopped search finished, with when each ended (seconds since the first
    started): what a killed benchmark run still tells."""
    import optuna

    from graftkit.search.storage import open_storage

    settings = json.loads((out / "search.json").read_text())["settings"]
    study = optuna.load_study(study_name=settings["study"], storage=open_storage(None, out))
    trials = study.get_trials(deepcopy=False)
    t0 = min(t.datetime_start for t in trials if t.datetime_start)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value,
             "strategy": (t.user_attrs.get("config") or {}).get("strategy.name",
                                                                 "linear_probe (default)"),
             "seconds": t.user_attrs.get("seconds"),
             "ended_at_s": (t.datetime_complete - t0).total_seconds()
             if t.datetime_complete else None} for t in trials]
    done = [r for r in rows if r["ended_at_s"] is not None]
    finished = [r for r in done if r["state"] == "complete"]
    summary = {"data": Path(settings["data"]).name, "trials": settings["trials"],
               "partial": True, "threads": settings["overrides"].get("train.threads"),
               "finished_trials": len(done), "elapsed_s_at_last_finish":
               max(r["ended_at_s"] for r in done),
               "states": {st: sum(r["state"] == st for r in rows)
                          for st in ("complete", "pruned", "fail", "running")},
               "best_value": max(r["value"] for r in finished),
               "default_value": next(r["value"] for r in finished if r["trial"] == 0),
               "rows": rows}
    print(f"{summary['data']}: {len(done)} of {settings['trials']} trials finished in "
          f"{summary['elapsed_s_at_last_finish']:.0f} s; best {summary['best_value']:.4f}, "
          f"graft default {summary['default_value']:.4f}; states {summary['states']}")
    print(f"written to {write_result('search', summary)}")


if __name__ == "__main__":
    main()
