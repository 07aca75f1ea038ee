"""timm's own training script (``train.py`` of a pytorch-image-models checkout: it is not part of
timm's wheel), run as a user fine-tunes with it: the same efficientnet_lite0 weights graft starts
from as ``--pretrained-path`` (timm adapts the head to the dataset's classes), every layer trained
for 5 epochs with AdamW at lr 3e-4 (weight decay 0.01), batch 32, cosine without warm-up (train.py's
warm-up epochs run at lr 1e-5: one of five left the head at chance), 224 px, on the CPU (``--device
cpu --no-prefetcher``), one loader worker (train.py's default is 4; with none, the checkout's
loader refuses its own persistent workers); val accuracy is train.py's own top-1 of its best
epoch (summary.csv).

    python timm_train.py THREADS DATA_DIR WEIGHTS.safetensors ARCH RESULT.json TRAIN_PY
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

threads, data, weights, arch, out, train_py = (int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3],
                                              sys.argv[4], sys.argv[5], Path(sys.argv[6]))
classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(train_py), "--data-dir", str(data), "--train-split", "train",
           "--val-split", "val", "--model", arch, "--pretrained-path", weights,
           "--num-classes", str(len(classes)), "--img-size", "224", "--epochs", "5",
           "--opt", "adamw", "--lr", "3e-4", "--weight-decay", "0.01", "-b", "32",
           "--sched", "cosine", "--warmup-epochs", "0", "--device", "cpu", "--no-prefetcher",
           "-j", "1", "--output", tmp, "--experiment", "run", "--checkpoint-hist", "1",
           "--log-interval", "1000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=train_py.parent)
    if proc.returncode:
        sys.exit(f"timm train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(open(Path(tmp) / "run" / "summary.csv")))
best = max(float(r["eval_top1"]) for r in rows)
json.dump({"accuracy": best / 100, "epochs": len(rows), "in_process_s": time.perf_counter() - t0,
           "last_epoch_accuracy": float(rows[-1]["eval_top1"]) / 100}, open(out, "w"))
