"""Every audio strategy on the shared spoken digits (fsdd, official split: file index 0-4 of each
speaker and digit is test, 5-49 train; val is carved out of train), with the built-in Whisper
tiny.en encoder: test accuracy, whole-process wall time, and robustness on the test clips (the
8 audio perturbations at the chosen severities). Each strategy runs in its own process with a
fresh feature cache, one after another, with the same thread setting.

    python benchmarks/audio.py [--strategies linear_probe,full] [--threads 2] [--epochs 3]
    python benchmarks/audio.py --table     # the README's table, from results/audio.json

``--epochs`` sets the fine-tuning strategies' epochs (the probe keeps its default 30, LP-FT
its probe stage); the JSON says what ran.
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

STRATEGIES = ("linear_probe", "last_n", "lp_ft", "gradual", "full")


def manifest(out: Path) -> Path:
    """``path,label,split`` rows of fsdd with its official split (the files are not copied)."""
    rows = ["path,label,split"]
    for f in sorted((DATA_DIR / "fsdd").glob("*/*.wav")):
        index = int(f.stem.rsplit("_", 1)[1])
        rows.append(f"{f},{f.parent.name},{'test' if index < 5 else 'train'}")
    out.write_text("\n".join(rows) + "\n")
    return out


def graft(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftkit.cli.main", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def table() -> str:
    """The README's markdown table of results/audio.json."""
    r = json.loads((Path(__file__).parent / "results" / "audio.json").read_text())
    names = list(next(iter(r["strategies"].values()))["per_perturbation"])
    head = ("| strategy | test acc | train s | mCA | " + " | ".join(n.replace("_", " ")
                                                               for n in names) + " |")
    rows = [head, "|" + "---|" * (4 + len(names))]
    for name, v in r["strategies"].items():
        rows.append(f"| {name} | {v['test_accuracy']:.4f} | {v['train_wall_s']:.0f} | "
                    f"{v['mca']:.3f} | " + " | ".join(f"{v['per_perturbation'][n]:.3f}"
                                                      for n in names) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--severities", default="1,3,5")
    ap.add_argument("--table", action="store_true", help="print the README table and stop")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    result: dict = {"load_avg_1m_before": round(os.getloadavg()[0], 2), "threads": args.threads,
                    "fine_tune_epochs": args.epochs, "severities": args.severities,
                    "model": "whisper-tiny.en", "strategies": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = manifest(tmp / "fsdd.csv")
        for name in args.strategies.split(","):
            env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp / f"cache-{name}")}
            out = tmp / name
            extra = [] if name == "linear_probe" else ["--epochs", str(args.epochs)]
            if name == "lp_ft":
                extra += ["strategy.probe_epochs=30"]
            load = round(os.getloadavg()[0], 2)
            train_s = graft(["train", "--data", str(data), "--strategy", name, "--out", str(out),
                             "-q", f"train.threads={args.threads}", *extra], env)
            metrics = json.loads((out / "metrics.json").read_text())
            rob_s = graft(["--threads", str(args.threads), "robustness", str(out), "--data",
                           str(data), "--split", "test", "--severities", args.severities, "-q"],
                          env)
            rob = json.loads((out / "robustness" / "results.json").read_text())
            row = {
                "test_accuracy": metrics["test"]["accuracy"], "val_accuracy":
                    metrics["val"]["accuracy"], "n_test": metrics["test"]["n"],
                "train_wall_s": train_s, "load_avg_1m": load,
                "robust_clean": rob["clean_accuracy"], "mca": rob["mca"],
                "per_perturbation": {k: round(v["mean"], 4)
                                     for k, v in rob["corruptions"].items()},
                "robustness_wall_s": rob_s,
            }
            result["strategies"][name] = row
            print(name, json.dumps(row), flush=True)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(write_result("audio", result))


if __name__ == "__main__":
    main()
