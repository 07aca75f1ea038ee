"""``train.ema``: what the weights' moving average buys on a real fine-tune. The same run (default
``full`` recipe of efficientnet_lite0, same seed) with and without ``train.ema``, interleaved,
same threads; val accuracy and log loss of the kept model, which candidate the run kept, whole
process wall time.

    python benchmarks/ema.py [--threads 2] [--sets hymenoptera] [--decay 0.999] [--strategy full]

Writes benchmarks/results/ema.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import IMAGE_SETS as SETS
from _common import graft_cli, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="hymenoptera")
    ap.add_argument("--decay", type=float, default=0.999)
    ap.add_argument("--strategy", default="full")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"))
        for name in args.sets.split(","):
            for ema in (None, args.decay):
                out = Path(tmp) / f"{name}-{ema}"
                extra = [f"train.ema={ema}"] if ema else []
                load = round(os.getloadavg()[0], 2)
                wall, _ = graft_cli(args.threads, "train", "--data", str(SETS[name]), "--out",
                                    str(out), "--strategy", args.strategy, "-q", *extra, env=env)
                m = json.loads((out / "metrics.json").read_text())
                hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
                best = hist[m["best_epoch"] - 1]
                row = {"set": name, "ema": ema, "strategy": args.strategy,
                       "load_avg_1m_before": load, "wall_s": round(wall, 1),
                       "val_accuracy": m["val"]["accuracy"], "val_log_loss": m["val"]["log_loss"],
                       "best_epoch": m["best_epoch"], "kept": best.get("kept", "weights"),
                       "per_epoch": [{k: h.get(k) for k in ("epoch", "val_accuracy",
                                                            "ema_val_accuracy", "kept")}
                                     for h in hist]}
                rows.append(row)
                print(f"{name} ema={ema}: val acc {row['val_accuracy']:.4f} log loss "
                      f"{row['val_log_loss']:.4f} (epoch {row['best_epoch']}, kept "
                      f"{row['kept']}) {wall:.0f} s, load {load}", flush=True)
    path = write_result("ema", {"threads": args.threads, "decay": args.decay, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
