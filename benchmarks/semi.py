"""A few labels and many unlabeled examples: how much of the gap to the full-label probe the
unlabeled data closes. On the shared image sets (efficientnet_lite0) and text sets (MiniLM-L6),
K labeled training examples per class are kept (``--shots K``, seeded by ``data.split_seed``);
with ``--unlabeled-rest`` the other training examples are the unlabeled pool (their labels are
hidden from training and used only to report how precise the pseudo-labels were). Each row is
one ``graft train`` process, run one after another with the same thread setting; every row of a
dataset shares one feature cache, so the first row of each (the full-label probe) pays the
backbone pass over the data and the others pay only what their own data needs (a new split
means new features: the cache is keyed by the data).

    python benchmarks/semi.py [--only images|text] [--threads 2] [--skip-fixmatch]
    python benchmarks/semi.py --table     # the README's table, from results/semi.json

Rows: ``full labels`` (the default probe on every training label), ``labels only`` (the probe
on K shots), ``prototype`` (nearest class mean, K shots), ``self-training`` (the probe with the
rest unlabeled, default threshold), ``self-training tau=0.95``, ``prototype + self-training``;
on hymenoptera also ``full`` fine-tuning and LP-FT on 2 shots, without and with FixMatch
(with and without its distribution alignment). The gap closed
is ``(row - labels only) / (full labels - labels only)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result

IMAGES = [("caltech101_10_160", [1]), ("hymenoptera_256", [2])]
TEXTS = [("trec", [4, 8]), ("sms_spam", [4, 8])]
RESULTS = Path(__file__).parent / "results" / "semi.json"


def graft(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "graftkit.cli.main", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"graft {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 1)


def rows_for(shots: int, fixmatch: bool) -> list[tuple[str, list[str]]]:
    k = ["--shots", str(shots)]
    rest = [*k, "--unlabeled-rest"]
    rows = [("labels only", k), ("prototype", [*k, "--strategy", "prototype"]),
            ("self-training", rest), ("self-training tau=0.95", [*rest, "semi.threshold=0.95"]),
            ("prototype + self-training", [*rest, "--strategy", "prototype"])]
    if fixmatch:
        rows += [("full, labels only", [*k, "--strategy", "full"]),
                 ("full + FixMatch", [*rest, "--strategy", "full"]),
                 ("full + FixMatch, no alignment", [*rest, "--strategy", "full",
                                                   "semi.align=false"]),
                 ("lp_ft, labels only", [*k, "--strategy", "lp_ft"]),
                 ("lp_ft + FixMatch", [*rest, "--strategy", "lp_ft", "--semi", "fixmatch"])]
    return rows


def run_dataset(name: str, shots_list: list[int], text: bool, threads: int, fixmatch: bool,
                tmp: Path) -> dict:
    src = DATA_DIR / name
    data = ["--data", str(src / "train.csv"), "--test", str(src / "test.csv")] if text else [
        "--data", str(src)]
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / f"cache-{name}")}
    metric = "macro_f1" if text else "accuracy"
    split = "test" if text else "val"

    def one(label: str, extra: list[str]) -> dict:
        out = tmp / f"{name}-{len(list(tmp.iterdir()))}"
        load = round(os.getloadavg()[0], 2)
        wall = graft(["train", *data, "--out", str(out), "-q", f"train.threads={threads}",
                      *extra], env)
        m = json.loads((out / "metrics.json").read_text())
        meta = json.loads((out / "meta.json").read_text())
        row = {"row": label, "args": extra, "wall_s": wall, "load_avg_1m": load,
               "val": m["val"][metric], split: m[split][metric], "n_train": m["train"]["n"]}
        semi = meta.get("semi")
        if semi:
            row["pool"] = semi["pool"]
            row["threshold"] = semi["threshold"]
            row["rounds"] = [{k: r.get(k) for k in ("round", "accepted", "pool_precision",
                                                      "val_precision", "temperature")}
                             for r in semi["rounds"]]
            hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
            fm = [h for h in hist if "unlabeled_accepted" in h]
            if fm:
                row["fixmatch_epochs"] = [{"epoch": h["epoch"],
                                           "accepted": round(h["unlabeled_accepted"], 3),
                                           "precision": h.get("pseudo_precision"),
                                           "val": h[f"val_{metric}"]} for h in fm]
        print(name, json.dumps(row), flush=True)
        return row

    full = one("full labels", [])
    result = {"metric": metric, "split": split, "full_labels": full, "shots": {}}
    for shots in shots_list:
        rows = [one(label, extra) for label, extra in rows_for(shots, fixmatch and not text
                                                                 and name == "hymenoptera_256")]
        base = rows[0][split]
        for r in rows:
            gap = full[split] - base
            r["gap_closed"] = round((r[split] - base) / gap, 3) if gap > 0 else None
        result["shots"][str(shots)] = rows
    return result


def table() -> str:
    r = json.loads(RESULTS.read_text())
    out = ["| data | shots | row | score | gap closed | pseudo-label precision (last round) | "
           "wall s |", "|---|---|---|---|---|---|---|"]
    for name, d in r["datasets"].items():
        what = f"{d['split']} {d['metric'].replace('_', '-')}"
        f = d["full_labels"]
        out.append(f"| {name} | all | full labels | {f[d['split']]:.4f} ({what}) | | | "
                   f"{f['wall_s']:.0f} |")
        for shots, rows in d["shots"].items():
            for row in rows:
                prec = ""
                if row.get("rounds"):
                    last = row["rounds"][-1]
                    prec = (f"{last['pool_precision']:.3f} of {last['accepted']}"
                            if last["pool_precision"] is not None else f"0 of {row['pool']}")
                elif row.get("fixmatch_epochs"):
                    e = row["fixmatch_epochs"][-1]
                    prec = (f"{e['precision']:.3f} ({e['accepted']:.0%} of the pool)"
                            if e["precision"] is not None else "none accepted")
                gap = "" if row["gap_closed"] is None or row["row"] == "labels only" else (
                    f"{row['gap_closed']:.0%}")
                out.append(f"| {name} | {shots} | {row['row']} | {row[d['split']]:.4f} | {gap} "
                           f"| {prec} | {row['wall_s']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["images", "text"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", help="comma-separated dataset names (default: all of --only)")
    ap.add_argument("--skip-fixmatch", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the README table and stop")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    sets = [(n, s, False) for n, s in IMAGES] * (args.only != "text") + [
        (n, s, True) for n, s in TEXTS] * (args.only != "images")
    if args.sets:
        sets = [x for x in sets if x[0] in args.sets.split(",")]
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result = {"threads": args.threads, "load_avg_1m_before": round(os.getloadavg()[0], 2),
              "models": {"image": "efficientnet_lite0", "text": "all-MiniLM-L6-v2"},
              "datasets": dict(old.get("datasets", {}))}
    with tempfile.TemporaryDirectory() as d:
        for name, shots, text in sets:
            result["datasets"][name] = run_dataset(name, shots, text, args.threads,
                                                   not args.skip_fixmatch, Path(d))
            result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            print(write_result("semi", result), flush=True)  # after each set: partial results


if __name__ == "__main__":
    main()
