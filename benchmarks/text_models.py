"""Built-in text encoders side by side: all-MiniLM-L6-v2 (22.7M), paraphrase-MiniLM-L3-v2 (17M)
and all-mpnet-base-v2 (110M, reassembled from five wheels), on sms_spam and trec (6 coarse
classes), same threads, a cold feature cache per run, one process per run (whole-process wall
time, which includes reading the model and, for mpnet, its cached reassembly).

Each run is ``graft train --data SET/train.csv --test SET/test.csv --model M --strategy S``
(val is split from train, seeded and stratified); the table gives val and test accuracy and
macro-F1 and the wall time. ``--strategies linear_probe,full`` adds full fine-tuning (slow on a
CPU: hours for mpnet on these sets; not part of the default).

    python benchmarks/text_models.py [--threads 2] [--sets sms_spam,trec]
        [--models all-MiniLM-L6-v2,paraphrase-MiniLM-L3-v2,all-mpnet-base-v2]
        [--strategies linear_probe] [--name text_models] [--append]

Writes benchmarks/results/NAME.json (default text_models.json; machine, versions, load average
before each run). ``--append`` keeps the rows already in that file (a row of the same set,
model and strategy is replaced), so slow rows can be measured one invocation at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import DATA_DIR, RESULTS, write_result
from _common import graft_cli as graft

MODELS = "all-MiniLM-L6-v2,paraphrase-MiniLM-L3-v2,all-mpnet-base-v2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="sms_spam,trec")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--strategies", default="linear_probe")
    ap.add_argument("--name", default="text_models",
                    help="result file name (keeps another run's JSON, e.g. text_models_full)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the result file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            data = DATA_DIR / name
            for strategy in args.strategies.split(","):
                for model in args.models.split(","):
                    out = Path(tmp) / f"{name}-{model}-{strategy}"
                    env = dict(os.environ, GRAFT_CACHE_DIR=str(out) + "-cache")
                    if model == "all-mpnet-base-v2":  # its reassembly is a one-time step
                        env["GRAFT_CACHE_DIR"] = str(Path(tmp) / "mpnet-cache")
                    load = round(os.getloadavg()[0], 2)
                    wall, _ = graft(args.threads, "train", "--data", str(data / "train.csv"),
                                    "--test", str(data / "test.csv"), "--model", model,
                                    "--strategy", strategy, "--out", str(out), "--quiet",
                                    "--no-audit", env=env)
                    m = json.loads((out / "metrics.json").read_text())
                    meta = json.loads((out / "meta.json").read_text())
                    row = {"set": name, "model": model, "strategy": strategy,
                           "wall_s": round(wall, 1), "load_avg_1m_before": load,
                           "val": {k: m["val"][k] for k in ("accuracy", "macro_f1", "n")},
                           "test": {k: m["test"][k] for k in ("accuracy", "macro_f1", "n")}
                           if "test" in m else None,
                           "timings": meta.get("timings")}
                    rows.append(row)
                    t = row["test"] or {}
                    print(f"{name:<9} {model:<24} {strategy:<12} val acc "
                          f"{row['val']['accuracy']:.4f} F1 {row['val']['macro_f1']:.4f}  test "
                          f"acc {t.get('accuracy', float('nan')):.4f} F1 "
                          f"{t.get('macro_f1', float('nan')):.4f}  {wall:.0f} s (load {load})",
                          flush=True)
    if args.append:
        old = RESULTS / f"{args.name}.json"
        done = {(r["set"], r["model"], r["strategy"]) for r in rows}
        kept = [r for r in json.loads(old.read_text())["rows"]
                if (r["set"], r["model"], r["strategy"]) not in done] if old.is_file() else []
        rows = kept + rows
    path = write_result(args.name, {"threads": args.threads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
