"""Several processes against threads: ``graft train --nproc 2`` (one thread each) against one
process with 2 threads, same data, same machine, interleaved A B A B, cold feature cache (a new
cache folder per run). Two workloads on hymenoptera_256 (pretrained efficientnet_lite0):

- the cached linear probe: its feature extraction (meta.json's ``features`` phase: train + val
  through the frozen backbone, 398 images) and the whole command;
- ``full`` fine-tuning, ``--epochs E``: the training phase (forward + backward of every training
  image, validation each epoch) and the whole command.

    python benchmarks/distributed.py [--reps 2] [--epochs 1] [--nproc 2] [--threads 2]

Writes benchmarks/results/distributed.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result


def run_once(data: Path, strategy: str, nproc: int, threads: int, epochs: int | None
             ) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "graftkit.cli.main", "--threads", str(threads), "train",
               "--data", str(data), "--strategy", strategy, "--out", str(out), "--quiet"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"))  # cold
        load = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x]
        t = meta["timings"]
        n_feat = meta["data"]["counts"]["train"] + meta["data"]["counts"]["val"]
        row = {"strategy": strategy, "nproc": nproc, "threads_per_process": threads // nproc,
               "load_avg_1m_before": load, "wall_s": round(wall, 2),
               "timings_s": t, "val_accuracy": metrics["val"]["accuracy"]}
        if strategy == "linear_probe":
            row["features_s"] = t.get("features")
            row["features_per_s"] = round(n_feat / t["features"], 1) if t.get("features") else None
        else:
            row["training_s"] = t.get("training")
            row["train_samples_per_s"] = [round(h["samples_per_s"], 1) for h in hist]
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the full fine-tuning")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    data = DATA_DIR / "hymenoptera_256"
    rows = []
    for strategy, epochs, key in (("linear_probe", None, "features_s"),
                                  ("full", args.epochs, "training_s")):
        for rep in range(args.reps):  # A B A B
            for nproc in (1, args.nproc):
                row = run_once(data, strategy, nproc, args.threads, epochs)
                row["rep"] = rep
                rows.append(row)
                print(f"{strategy:<12} nproc {nproc}: {key} {row[key]:7.2f}  wall "
                      f"{row['wall_s']:6.1f}  val acc {row['val_accuracy']:.4f}  "
                      f"(load {row['load_avg_1m_before']})", flush=True)
    summary = {}
    for strategy, key in (("linear_probe", "features_s"), ("full", "training_s")):
        one = [r for r in rows if r["strategy"] == strategy and r["nproc"] == 1]
        many = [r for r in rows if r["strategy"] == strategy and r["nproc"] == args.nproc]
        m1, mn = statistics.median(r[key] for r in one), statistics.median(r[key] for r in many)
        w1 = statistics.median(r["wall_s"] for r in one)
        wn = statistics.median(r["wall_s"] for r in many)
        summary[strategy] = {
            "phase": key.removesuffix("_s"), f"threads_{args.threads}_s": m1,
            f"nproc_{args.nproc}_s": mn, "speedup": round(m1 / mn, 3),
            "wall_threads_s": w1, "wall_nproc_s": wn, "wall_speedup": round(w1 / wn, 3)}
        print(f"{strategy}: {key} {m1:.2f} s with {args.threads} threads vs {mn:.2f} s with "
              f"--nproc {args.nproc}: {m1 / mn:.2f}x (whole command {w1:.1f} vs {wn:.1f} s)")
    print(write_result("distributed", {"data": "hymenoptera_256", "threads": args.threads,
                                       "nproc": args.nproc, "full_epochs": args.epochs,
                                       "summary": summary, "runs": rows}))


if __name__ == "__main__":
    main()
