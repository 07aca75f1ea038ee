"""Mixed precision and channels_last on a CUDA GPU: graft's training-step throughput in fp32 vs
bf16 autocast + channels_last (what ``train.precision=auto`` picks there), same model, batch and
data, and the loss of each after the same steps (they must agree closely).

    python benchmarks/gpu_precision.py [--batch 128] [--steps 20]

Needs a CUDA GPU; prints a notice and exits 0 without one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import DATA_DIR, write_result


def throughput(amp: torch.dtype | None, channels_last: bool, loader, steps: int) -> dict:
    from graftkit.models.vision import create_model
    from graftkit.strategies import ALL, Stage
    from graftkit.train.hooks import LoopState
    from graftkit.train.loop import LoopSettings, _stage_optimizer, train_epoch
    from graftkit.train.losses import build_loss
    from graftkit.train.progress import Reporter

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = create_model("efficientnet_lite0", 2, pretrained=True).to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    s = LoopSettings(task="classification", classes=["a", "b"], device=dev, amp_dtype=amp,
                     channels_last=channels_last)
    state = LoopState(model)
    stage = Stage("full", 1, 1e-4, lambda e: ALL)
    state.optimizer, state.scheduler = _stage_optimizer(model, stage, s, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    args = (SimpleNamespace(forward=model, mix=None), loader, state, build_loss("cross_entropy"),
            s, ALL, Reporter(quiet=True), scaler)
    train_epoch(model, *args)  # warm-up: cudnn autotune, allocator
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    rec = train_epoch(model, *args)
    torch.cuda.synchronize()
    n = sum(len(x) for x, _ in loader)
    return {"img_s": n / (time.perf_counter() - t0), "loss": rec["train_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data", type=Path, default=DATA_DIR / "hymenoptera_256")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        return
    from train_overhead import batches

    ds = batches(args.data, 244, 224)
    idx = torch.arange(args.batch * args.steps) % len(ds)
    x, y = ds.tensors[0][idx].cuda(), ds.tensors[1][idx].cuda()
    loader = list(zip(x.split(args.batch), y.split(args.batch)))
    fp32 = throughput(None, False, loader, args.steps)
    bf16 = throughput(torch.bfloat16, True, loader, args.steps)
    ratio = bf16["img_s"] / fp32["img_s"]
    gpu = torch.cuda.get_device_name(0)
    print(f"{gpu}, efficientnet_lite0 full fine-tune, batch {args.batch}:")
    print(f"  fp32                    {fp32['img_s']:8.0f} img/s  loss {fp32['loss']:.4f}")
    print(f"  bf16 + channels_last    {bf16['img_s']:8.0f} img/s  loss {bf16['loss']:.4f}")
    print(f"  speed-up                {ratio:8.2f}x")
    path = write_result("gpu_precision", {"batch": args.batch, "steps": args.steps, "fp32": fp32,
                                          "bf16_channels_last": bf16, "speedup": ratio})
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
