"""Feature extraction of a frozen backbone: ONNX Runtime against eager torch (fp32), the default
cached linear probe, same threads, cold feature cache (a new cache folder per run), interleaved:
``torch``; ``onnx`` with the engine exported beforehand; and ``cold``, the default
(``feature_engine=auto``) with no engine yet, so that its one-time export counts.
Images: hymenoptera_256 and caltech101_10_160 (efficientnet_lite0); texts: trec (built-in
MiniLM-L6). Throughput is meta.json's ``features`` phase (train + val [+ test]) over the inputs.

    python benchmarks/feature_engine.py [--threads 2] [--reps 1] [--sets hymenoptera,caltech,trec]

Writes benchmarks/results/feature_engine.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, write_result

SETS = {"hymenoptera": ["--data", str(DATA_DIR / "hymenoptera_256")],
        "caltech": ["--data", str(DATA_DIR / "caltech101_10_160")],
        "trec": ["--data", str(DATA_DIR / "trec" / "train.csv"), "--test",
                 str(DATA_DIR / "trec" / "test.csv"), "--task", "text-classification"]}


def run(name: str, engine: str, threads: int, engines_dir: Path | None) -> dict:
    """One process; ``engines_dir`` None: an empty engine folder (cold)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        (cache).mkdir()
        if engines_dir is not None:  # the exported engines persist; features not
            os.symlink(engines_dir, cache / "engines")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "graftkit.cli.main", "--threads", str(threads), "train",
               *SETS[name], "--strategy", "linear_probe", "--out", str(out), "--quiet",
               f"train.feature_engine={'auto' if engine == 'cold' else engine}"]
        load = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True,
                       env=dict(os.environ, GRAFT_CACHE_DIR=str(cache)))
        wall = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        n = sum(meta["data"]["counts"].values())
        feat = meta["timings"]["features"]
        split = "test" if "test" in metrics else "val"
        return {"set": name, "engine": engine, "load_avg_1m_before": load,
                "wall_s": round(wall, 2), "features_s": feat, "inputs": n,
                "inputs_per_s": round(n / feat, 1), "export_s": meta["feature_engine"].get(
                    "export_s"), "feature_engine": meta["feature_engine"],
                "score_split": split, "accuracy": metrics[split]["accuracy"],
                "macro_f1": metrics[split].get("macro_f1"),
                "n_scored": metrics[split]["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--sets", default="hymenoptera,caltech,trec")
    args = ap.parse_args()
    engines_dir = Path(tempfile.mkdtemp(prefix="graft-engines-"))
    rows, summary = [], {}
    try:
        for name in args.sets.split(","):
            first = run(name, "onnx", args.threads, engines_dir)  # exports: timed, not counted
            first["export_run"] = True
            rows.append(first)
            print(f"{name}: export {first['export_s']:.1f} s", flush=True)
            mine = []
            for rep in range(args.reps):
                for engine in ("torch", "onnx", "cold"):
                    r = run(name, engine, args.threads, None if engine == "cold" else engines_dir)
                    r["rep"] = rep
                    rows.append(r)
                    mine.append(r)
                    print(f"{name:<12} {engine:<6} {r['inputs_per_s']:7.1f} inputs/s  features "
                          f"{r['features_s']:6.1f} s  wall {r['wall_s']:6.1f} s  "
                          f"{r['score_split']} acc {r['accuracy']:.4f}  (load "
                          f"{r['load_avg_1m_before']})", flush=True)
            t = [r for r in mine if r["engine"] == "torch"]
            o = [r for r in mine if r["engine"] == "onnx"]
            c = [r for r in mine if r["engine"] == "cold"]
            tp = sum(r["inputs_per_s"] for r in t) / len(t)
            op = sum(r["inputs_per_s"] for r in o) / len(o)
            cp = sum(r["inputs_per_s"] for r in c) / len(c)
            summary[name] = {"torch_inputs_per_s": round(tp, 1), "onnx_inputs_per_s": round(op, 1),
                             "speedup": round(op / tp, 2), "export_s": first["export_s"],
                             "cold_inputs_per_s": round(cp, 1), "cold_speedup": round(cp / tp, 2),
                             "cold_engine": c[0]["feature_engine"].get("engine"),
                             "cold_accuracy": c[0]["accuracy"],
                             "torch_accuracy": t[0]["accuracy"], "onnx_accuracy": o[0]["accuracy"],
                             "score_split": t[0]["score_split"], "n_scored": t[0]["n_scored"],
                             "torch_wall_s": t[0]["wall_s"], "onnx_wall_s": o[0]["wall_s"]}
            print(f"{name}: onnx {op:.1f} vs torch {tp:.1f} inputs/s: {op / tp:.2f}x; default "
                  f"with its first export {cp:.1f}: {cp / tp:.2f}x", flush=True)
    finally:
        shutil.rmtree(engines_dir, ignore_errors=True)
    print(write_result("feature_engine", {"threads": args.threads, "reps": args.reps,
                                          "summary": summary, "runs": rows}))


if __name__ == "__main__":
    main()
