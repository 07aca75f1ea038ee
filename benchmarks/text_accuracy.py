"""Text classification accuracy and time on the shared real datasets (issue: text).

For each (dataset, strategy) -- sms_spam and trec (the 6 coarse classes: the ``label`` column;
``label_fine`` holds the 50 fine ones) x linear_probe, lora, full -- train graft's built-in
offline encoder (all-MiniLM-L6-v2) with ``graftkit.finetune`` on ``train.csv`` (graft splits a
seeded, stratified 20% validation set off it and selects the checkpoint on it), score the
untouched ``test.csv``, and record test accuracy and macro-F1, the training wall time and, for
lora, the fraction of parameters that train.

Recipes: graft's defaults unless ``--set`` overrides them; every override is recorded with the
row (``overrides``) next to the resolved stages (epochs, lr) and the token length used. Nothing is
selected on the test split.

    python benchmarks/text_accuracy.py [--only sms_spam:lora ...]
        [--set sms_spam:full:train.epochs=3 ...] [--threads 2]

Each finished row is merged into benchmarks/results/text_accuracy.json at once (rows of the same
dataset, strategy and overrides are replaced), so a killed run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, ROOT, write_result

DATASETS = {"sms_spam": "label", "trec": "label"}  # trec: label = 6 coarse classes
STRATEGIES = ["linear_probe", "lora", "full"]
RESULT = ROOT / "benchmarks" / "results" / "text_accuracy.json"


def _history(run_dir: Path) -> list[dict]:
    p = run_dir / "history.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] \
        if p.is_file() else []


def run_case(data: str, strategy: str, overrides: dict, tmp: Path) -> dict:
    import graftkit

    d = DATA_DIR / data
    extra = {"data.label_column": DATASETS[data], "data.test": str(d / "test.csv"), **overrides}
    out = tmp / f"{data}-{strategy}-{len(overrides)}"
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    run = graftkit.finetune(data=d / "train.csv", strategy=strategy, out=out, quiet=True,
                            overrides=extra, overwrite=True)
    wall = time.perf_counter() - t0
    m, meta, hist = run.metrics, run.meta, _history(run.path)
    trainable = max((r.get("trainable_params", 0) for r in hist), default=0)
    total = meta["model"]["total_params"]  # with lora: the encoder, the adapters and the head
    row = {
        "data": data, "strategy": strategy, "label_column": DATASETS[data],
        "model": meta["model"]["name"], "overrides": overrides,
        "stages": meta["stages"], "max_length": meta["preprocessing"].get("max_length"),
        "counts": meta["data"]["counts"], "classes": len(meta["classes"]),
        "best_epoch": m["best_epoch"], "epochs_run": len(hist), "monitor": m["monitor"],
        "val_accuracy": m["val"]["accuracy"], "val_macro_f1": m["val"]["macro_f1"],
        "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
        "train_s": meta["train_time_s"], "wall_s": wall,
        "load_average_1min": [load0, os.getloadavg()[0]],  # the machine is shared: context
        "trainable_params": trainable, "total_params": total,
        "trainable_fraction": trainable / total if total else None,
        "val_accuracy_by_epoch": [r.get("val_accuracy") for r in hist],
    }
    if strategy == "lora":
        # peft adds the adapters to the model: count them out for the fraction of the original.
        row["trainable_fraction_of_base"] = trainable / (total - trainable + _head(run))
    return row


def _head(run) -> int:
    """Head parameters (they train, and belong to the base model as well)."""
    from safetensors import safe_open

    with safe_open(str(run.path / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() for k in f.keys() if k.startswith("head."))


def save(rows: list[dict]) -> None:
    old = json.loads(RESULT.read_text())["rows"] if RESULT.is_file() else []
    key = lambda r: (r["data"], r["strategy"], json.dumps(r["overrides"], sort_keys=True))  # noqa
    keep = {key(r): r for r in old}
    for r in rows:
        keep[key(r)] = r
    write_result("text_accuracy", {"rows": list(keep.values())})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="dataset:strategy pairs")
    ap.add_argument("--set", nargs="*", default=[], help="dataset:strategy:key=value overrides")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    cases = [tuple(c.split(":")) for c in args.only] if args.only else [
        (d, s) for d in DATASETS for s in STRATEGIES]
    sets: dict[tuple[str, str], dict] = {}
    from graftkit.config import parse_override

    for item in args.set:
        data, strategy, kv = item.split(":", 2)
        k, v = parse_override(kv)
        sets.setdefault((data, strategy), {})[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        for data, strategy in cases:
            overrides = dict(sets.get((data, strategy), {}))
            if args.threads:
                overrides["train.threads"] = args.threads
            row = run_case(data, strategy, overrides, Path(tmp))
            save([row])
            frac = (f"  trainable {row['trainable_fraction']:.4f}" if strategy == "lora" else "")
            print(f"{data:<9} {strategy:<12} test acc {row['test_accuracy']:.4f}  macro-F1 "
                  f"{row['test_macro_f1']:.4f}  (val acc {row['val_accuracy']:.4f}, best epoch "
                  f"{row['best_epoch']}/{row['epochs_run']}, max_length {row['max_length']})  "
                  f"train {row['train_s']:.0f} s{frac}  overrides {row['overrides']}",
                  flush=True)
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
