"""Cached linear probe vs recomputing the backbone every epoch.

Same model (built-in efficientnet_lite0), data (hymenoptera_256: 244 train, 153 val), epochs
(10, and the linear probe's default of 30), batch size and threads. Both go through graft's own
training loop; the only difference is ``train.feature_cache`` (``memory``: features once, then
the head trains on them; ``off``: the frozen backbone runs over train and val every epoch, as a
plain fixed-feature-extractor loop does). Timed: the training loop, including the cached run's
one-off feature extraction; data audit and model creation are the same for both and excluded.
Each variant runs in a fresh process (as a user's `graft train` does), so neither inherits the
other's warmed-up kernels.

A third variant is the plain PyTorch loop a user would write without graft (the PyTorch transfer
learning tutorial's "fixed feature extractor", with the frozen backbone kept in eval mode): same
model, weights, preprocessing, batch size, optimizer and epochs; the backbone runs every epoch.
Caching alone is measured by graft-cached vs graft-recompute; what a user gains over their own
loop by graft-cached vs plain.

    python benchmarks/linear_probe_cache.py [--epochs 10 30] [--data DIR]
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


def timed_fit(data: Path, epochs: int, cache: str, out: Path) -> tuple[float, float]:
    from graftkit.config import build_config
    from graftkit.launch import monitor_metric, resolve_inputs
    from graftkit.run import prepare_out_dir
    from graftkit.session import build_session

    cfg = build_config(None, {"data.path": str(data), "strategy.name": "linear_probe",
                              "train.epochs": epochs, "train.feature_cache": cache,
                              "train.augment": "none"})
    prepare_out_dir(out, overwrite=False)
    cfg = resolve_inputs(cfg)
    session = build_session(cfg, out, monitor_metric(cfg), quiet=True)
    t0 = time.perf_counter()
    session.fit()
    seconds = time.perf_counter() - t0
    return seconds, float(session.best_value or 0.0)


def plain_fit(data: Path, epochs: int) -> tuple[float, float]:
    """The hand-written fixed-feature-extractor loop: backbone recomputed every epoch."""
    import torch
    from torchvision.datasets import ImageFolder

    from graftkit.data.transforms import eval_transform
    from graftkit.models.vision import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 2, pretrained=True, dropout=0.2)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    tf = eval_transform(model.data_config)
    train = torch.utils.data.DataLoader(ImageFolder(str(data / "train"), tf),
                                        batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(ImageFolder(str(data / "val"), tf),
                                      batch_size=32)
    opt = torch.optim.AdamW(model.head.parameters(), lr=3e-3, weight_decay=1e-4)
    best, t0 = 0.0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        model.backbone.eval()  # frozen: keep the pretrained BatchNorm statistics
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
        best = max(best, correct / len(val.dataset))
    return time.perf_counter() - t0, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--data", type=Path, default=DATA_DIR / "hymenoptera_256")
    ap.add_argument("--child", choices=["memory", "off", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one timed variant, in its own process; prints JSON
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["GRAFT_CACHE_DIR"] = tmp  # no disk cache from earlier runs
            if args.child == "plain":
                print(json.dumps(plain_fit(args.data, args.epochs[0])))
            else:
                print(json.dumps(timed_fit(args.data, args.epochs[0], args.child,
                                           Path(tmp) / "run")))
        return
    rows = []
    for epochs in args.epochs:
        res = {}
        for mode in ("memory", "off", "plain"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--epochs",
                                  str(epochs), "--data", str(args.data)],
                                 capture_output=True, text=True, check=True).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
        (cached_s, cached_acc), (recompute_s, recompute_acc) = res["memory"], res["off"]
        plain_s, plain_acc = res["plain"]
        rows.append({"epochs": epochs, "cached_s": cached_s, "recompute_s": recompute_s,
                     "speedup": recompute_s / cached_s, "cached_best_val_accuracy": cached_acc,
                     "recompute_best_val_accuracy": recompute_acc, "plain_s": plain_s,
                     "speedup_vs_plain": plain_s / cached_s, "plain_best_val_accuracy": plain_acc})
        print(f"linear probe, {epochs} epochs on {args.data.name}:")
        print(f"  cached features       {cached_s:7.1f} s   best val accuracy {cached_acc:.4f}")
        print(f"  recomputed per epoch  {recompute_s:7.1f} s   best val accuracy "
              f"{recompute_acc:.4f}")
        print(f"  plain PyTorch loop    {plain_s:7.1f} s   best val accuracy {plain_acc:.4f}")
        print(f"  speed-up (caching alone, graft vs graft)  {recompute_s / cached_s:7.1f}x")
        print(f"  speed-up (graft cached vs plain loop)     {plain_s / cached_s:7.1f}x")
    path = write_result("linear_probe_cache", {
        "data": args.data.name, "model": "efficientnet_lite0", "rows": rows})
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
