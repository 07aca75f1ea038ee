"""Robust fine-tuning methods compared on clean accuracy and ImageNet-C corruption accuracy.

For each dataset: full fine-tuning (graft's default recipe), full + AugMix, LP-FT, and WiSE-FT
(the LP-FT run's probe and fine-tuned weights mixed, alpha picked on validation accuracy). LP-FT
and WiSE-FT come from the same training run (WiSE-FT's alpha = 1 end is the LP-FT model). Every
model is then scored with ``Run.robustness`` (what ``graft robustness`` runs) on the same images:
the validation split, or ``--per-class N`` seeded images of each class of it; the same
corruptions, severities and corruption seed for every model, so each model sees identical
corrupted pixels (per-image seeds, see graftkit.robustness.bench.cell_seed). mCA is the mean over
all corruption x severity cells scored.

The done-means check of the robustness issue is computed per dataset: a method passes when its
mCA is >= 2 points above plain ``full`` and its clean accuracy (on the scored images) is at most
1 point below it.

Runs live in ``--work`` (default /tmp/graft_bench_robustness): a model already trained there is
reused, a model already scored with the same settings is not scored again, and every scored model
is merged into benchmarks/results/robustness.json at once, so a killed run loses at most the
model in progress. Pass ``--fresh`` to retrain.

    python benchmarks/robustness.py [--only hymenoptera_256] [--corruptions all]
        [--severities 1-5] [--per-class N] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from _common import DATA_DIR, ROOT, write_result

DATASETS = ["hymenoptera_256", "caltech101_10_160"]
METHODS = {"full": ("full", {}), "full+augmix": ("full", {"train.augment": "augmix"}),
           "lp_ft+wise_ft": ("lp_ft", {"train.wise_ft": "auto"})}
ORDER = ["full", "full+augmix", "lp_ft", "wise_ft"]
RESULT = ROOT / "benchmarks" / "results" / "robustness.json"
MCA_GAIN, CLEAN_LOSS = 0.02, 0.01  # the done means: >= 2 points mCA, <= 1 point clean


def _lp_ft_copy(run_dir: Path, dest: Path) -> Path:
    """The LP-FT model (WiSE-FT's alpha = 1 end) as a run directory of its own."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("eval", "robustness"))
    shutil.copy(dest / "checkpoints" / "finetuned.safetensors", dest / "model.safetensors")
    meta = json.loads((dest / "meta.json").read_text())
    meta["wise_ft"] = None
    (dest / "meta.json").write_text(json.dumps(meta, indent=2))
    return dest


def _completed(path: Path) -> bool:
    """A finished run, whose WiSE-FT alpha (if any) is the one graft's current rule picks."""
    from graftkit.train.wise_ft import pick_alpha

    p = path / "meta.json"
    meta = json.loads(p.read_text()) if p.is_file() else {}
    wise = meta.get("wise_ft") or {}
    if wise.get("sweep") and wise["alpha"] != pick_alpha(wise["sweep"]):
        return False  # trained when graft broke alpha ties differently
    return meta.get("status") == "completed"


def per_class_subset(data: str, split: str, n: int, seed: int, work: Path) -> Path:
    """A folder of symlinks to ``n`` seeded images of each class of ``data/split`` (no copies)."""
    src = DATA_DIR / data / split
    dest = work / f"{data}-{split}-{n}per_class-seed{seed}"
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        picked = sorted(random.Random(f"{seed}/{cls.name}").sample(files, min(n, len(files))))
        (tmp / cls.name).mkdir(parents=True)
        for f in picked:
            (tmp / cls.name / f.name).symlink_to(f)
    tmp.rename(dest)
    return dest


def train_all(data: str, work: Path, fresh: bool) -> dict[str, tuple[Path, float | None]]:
    """Every method's run directory and training seconds (None when reused from ``work``)."""
    import graftkit

    runs: dict[str, tuple[Path, float | None]] = {}
    for method, (strategy, extra) in METHODS.items():
        out = work / f"{data}-{method}"
        seconds = None
        if fresh or not _completed(out):
            t0 = time.perf_counter()
            graftkit.finetune(data=DATA_DIR / data, strategy=strategy, quiet=True, out=out,
                              overrides=extra, overwrite=True)
            seconds = time.perf_counter() - t0
            print(f"{data:<18} trained {method} in {seconds:.0f} s", flush=True)
        if method == "lp_ft+wise_ft":
            dest = work / f"{data}-lp_ft"
            if seconds is not None or not _completed(dest):
                _lp_ft_copy(out, dest)
            runs["lp_ft"] = (dest, seconds)
            runs["wise_ft"] = (out, seconds)
        else:
            runs[method] = (out, seconds)
    return runs


def _scored(path: Path, settings: dict) -> dict | None:
    """The run's robustness results if they were made with ``settings``."""
    p = path / "robustness" / "results.json"
    if not p.is_file():
        return None
    r = json.loads(p.read_text())
    same = (r["data"] == settings["data"] and r["seed"] == settings["seed"]
            and r["severities"] == settings["severities"]
            and sorted(r["corruptions"]) == sorted(settings["corruptions"]))
    return r if same else None


def done_means(rows: list[dict]) -> dict[str, dict]:
    """Per dataset, each method's mCA and clean deltas against plain full, and the verdict."""
    out = {}
    for data in dict.fromkeys(r["data"] for r in rows):
        base = next((r for r in rows if r["data"] == data and r["method"] == "full"), None)
        if base is None:
            continue
        checks = {}
        for r in rows:
            if r["data"] != data or r["method"] == "full":
                continue
            d_mca = r["mca"] - base["mca"]
            d_clean = r["clean_accuracy"] - base["clean_accuracy"]
            checks[r["method"]] = {"d_mca": d_mca, "d_clean": d_clean,
                                   "passes": d_mca >= MCA_GAIN - 1e-12
                                   and d_clean >= -CLEAN_LOSS - 1e-12}
        out[data] = {"methods": checks, "met": any(c["passes"] for c in checks.values()),
                     "criterion": f"mCA >= full + {MCA_GAIN:g} and clean >= full - "
                                  f"{CLEAN_LOSS:g}"}
    return out


def save(rows: list[dict], settings: dict) -> None:
    old = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    new_data = {r["data"] for r in rows}
    keep = {(r["data"], r["method"]): r for r in old.get("rows", [])
            if r["data"] not in new_data or r.get("settings") == settings}
    for r in rows:
        keep[(r["data"], r["method"])] = r
    ordered = sorted(keep.values(), key=lambda r: (DATASETS.index(r["data"])
                     if r["data"] in DATASETS else 99, ORDER.index(r["method"])))
    for data in {r["data"] for r in ordered}:
        base = next((r for r in ordered if r["data"] == data and r["method"] == "full"), None)
        for r in ordered:
            if base and r["data"] == data:
                r["d_mca_vs_full"] = r["mca"] - base["mca"]
                r["d_clean_vs_full"] = r["clean_accuracy"] - base["clean_accuracy"]
    write_result("robustness", {"rows": ordered, "done_means": done_means(ordered)})


def main() -> None:
    import graftkit
    from graftkit.robustness.corruptions import parse_severities, resolve_corruptions

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--corruptions", default="all", help="as graft robustness --corruptions")
    ap.add_argument("--severities", default="1-5")
    ap.add_argument("--per-class", nargs="*", default=[],
                    help="DATASET=N: score N seeded validation images per class")
    ap.add_argument("--seed", type=int, default=0, help="corruption seed")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default="/tmp/graft_bench_robustness")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    per_class = {k: int(v) for k, v in (s.split("=") for s in args.per_class)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE_DIR", str(work / "cache"))
    names, sevs = resolve_corruptions(args.corruptions), parse_severities(args.severities)
    for data in args.only or DATASETS:
        n_pc = per_class.get(data)
        scored_on = (per_class_subset(data, "val", n_pc, args.seed, work) if n_pc
                     else None)
        settings = {"corruptions": names, "severities": sevs, "seed": args.seed,
                    "images": f"{n_pc} per class of val" if n_pc else "all of val"}
        runs = train_all(data, work, args.fresh)
        for method in ORDER:
            path, train_s = runs[method]
            run = graftkit.load_run(path)
            want = {**settings, "data": str(scored_on) if scored_on else str(DATA_DIR / data)}
            r, t0 = (None if args.fresh else _scored(path, want)), time.perf_counter()
            load0 = os.getloadavg()[0]
            if r is None:
                r = run.robustness(data=scored_on, split=None if scored_on else "val",
                                   corruptions=",".join(names),
                                   severities=",".join(map(str, sevs)), seed=args.seed,
                                   workers=args.workers)
            row = {"data": data, "method": method, "settings": settings,
                   "clean_accuracy": r["clean_accuracy"], "mca": r["mca"],
                   "relative_robustness": r["relative_robustness"], "n": r["n"],
                   "val_accuracy": run.metrics["val"]["accuracy"],
                   "n_val": run.metrics["val"]["n"],
                   "corruptions": {k: v["mean"] for k, v in r["corruptions"].items()},
                   "per_severity": {s: sum(v["severity"][str(s)]
                                           for v in r["corruptions"].values())
                                    / len(r["corruptions"]) for s in r["severities"]},
                   "wise_ft_alpha": (run.meta.get("wise_ft") or {}).get("alpha"),
                   "stages": run.meta["stages"], "best_epoch": run.meta.get("best_epoch"),
                   "train_s": run.meta["train_time_s"], "train_wall_s": train_s,
                   "robustness_s": r["seconds"], "wall_s": time.perf_counter() - t0,
                   "load_average_1min": [load0, os.getloadavg()[0]]}
            save([row], settings)
            print(f"{data:<18} {method:<12} clean {row['clean_accuracy']:.4f}  mCA "
                  f"{row['mca']:.4f}  rel {row['relative_robustness']:.3f}"
                  + (f"  alpha {row['wise_ft_alpha']}" if row["wise_ft_alpha"] else "")
                  + f"  (n {row['n']}, robustness {row['robustness_s']:.0f} s)", flush=True)
    res = json.loads(RESULT.read_text())
    for data, d in res["done_means"].items():
        for m, c in d["methods"].items():
            print(f"{data:<18} {m:<12} d_mCA {100 * c['d_mca']:+.1f} pt  d_clean "
                  f"{100 * c['d_clean']:+.1f} pt  {'PASS' if c['passes'] else 'no'}")
        print(f"{data:<18} done means ({d['criterion']}): {'met' if d['met'] else 'NOT met'}")
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
