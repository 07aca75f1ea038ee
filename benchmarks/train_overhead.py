"""graft's full fine-tune training-step throughput vs a minimal hand-written PyTorch loop.

Same model (efficientnet_lite0 + a 2-class head), same batches (real hymenoptera photos,
preprocessed once into memory so decoding does not blur the comparison), same batch size, optimizer
(AdamW), threads. graft runs its real ``train_epoch`` (loss check, schedule, progress, hooks-free);
the hand loop is forward, loss, backward, step. Rounds alternate A/B and the median is taken.

    python benchmarks/train_overhead.py [--batch 32] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import DATA_DIR, write_result


def batches(data: Path, n: int, size: int) -> torch.utils.data.TensorDataset:
    from graftkit.data.images import load_image
    from graftkit.data.transforms import DataConfig, eval_transform

    tf = eval_transform(DataConfig(size, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3))
    files = sorted((data / "train").rglob("*.jpg"))[:n]
    x = torch.stack([tf(load_image(f)) for f in files])
    y = torch.tensor([0 if f.parent.name == "ants" else 1 for f in files])
    return torch.utils.data.TensorDataset(x, y)


def hand_loop(model, loader) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def graft_loop(model, loader, channels_last: bool = False) -> float:
    from graftkit.strategies import ALL, Stage
    from graftkit.train.hooks import LoopState
    from graftkit.train.loop import LoopSettings, _stage_optimizer, train_epoch
    from graftkit.train.losses import build_loss
    from graftkit.train.progress import Reporter

    # Same computation as the hand loop: BatchNorm in train mode, AdamW's default weight decay.
    s = LoopSettings(task="classification", classes=["ants", "bees"], weight_decay=0.01,
                     freeze_bn=False, channels_last=channels_last)
    stage = Stage("full", 1, 1e-5, lambda e: ALL)
    state = LoopState(model)
    state.optimizer, state.scheduler = _stage_optimizer(model, stage, s, len(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rec = train_epoch(model, SimpleNamespace(forward=model, mix=None), loader, state,
                      build_loss("cross_entropy"), s, ALL, Reporter(quiet=True), scaler)
    return rec["samples_per_s"]


def main() -> None:
    from graftkit.models.vision import create_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DATA_DIR / "hymenoptera_256")
    args = ap.parse_args()
    torch.manual_seed(0)
    ds = batches(args.data, args.batch * args.steps, 224)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False)
    model = create_model("efficientnet_lite0", 2, pretrained=True, dropout=0.2)
    # graft's default on CPU and CUDA is channels_last (train.channels_last=auto); measured too.
    model_cl = create_model("efficientnet_lite0", 2, pretrained=True, dropout=0.2)
    model_cl.to(memory_format=torch.channels_last)
    hand_loop(model, [next(iter(loader))])  # warm-up (allocator, kernels)
    graft_loop(model_cl, [next(iter(loader))], channels_last=True)
    hand, graft, graft_cl = [], [], []
    for _ in range(args.rounds):
        hand.append(hand_loop(model, loader))
        graft.append(graft_loop(model, loader))
        graft_cl.append(graft_loop(model_cl, loader, channels_last=True))
    h, g, gc = statistics.median(hand), statistics.median(graft), statistics.median(graft_cl)
    fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
    print(f"full fine-tune, efficientnet_lite0, batch {args.batch}, {torch.get_num_threads()} "
          f"threads, {args.steps} steps x {args.rounds} rounds (median):")
    print(f"  hand-written loop              {h:6.1f} img/s   ({fmt(hand)})")
    print(f"  graft train_epoch, same layout {g:6.1f} img/s   ({fmt(graft)})")
    print(f"  graft default (channels_last)  {gc:6.1f} img/s   ({fmt(graft_cl)})")
    print(f"  ratio graft/hand, same layout  {g / h:6.3f}   (the loop's overhead)")
    print(f"  ratio graft default/hand       {gc / h:6.3f}")
    path = write_result("train_overhead", {
        "model": "efficientnet_lite0", "batch": args.batch, "steps": args.steps,
        "rounds": args.rounds, "hand_img_s": h, "graft_img_s": g, "ratio": g / h,
        "graft_channels_last_img_s": gc, "ratio_default": gc / h,
        "hand_rounds": hand, "graft_rounds": graft, "graft_channels_last_rounds": graft_cl,
    })
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
