"""How long the corruption benchmark takes: 250 images x 15 corruptions x 5 severities.

The images are 250 of the 397 hymenoptera_256 photos (a fixed random draw over train and val),
as stored (short side 256 px), decoded once.
The model is trivial (a fixed function of the mean colour), so the time is the corrupting, done
by ``run_corruptions`` on all cores, plus shipping the images to and from the workers. Per
corruption, two figures:

- ``wall_s``: wall-clock seconds of the full run attributed to the corruption (from when its
  predecessor's last image was scored to when its own last one was); these add up to the total,
  but the boundaries blur by the few jobs in flight;
- ``ms_per_image``: one core's cost of one corrupted image (mean over severities), from a
  separate in-process pass over ``--sample`` images, to see which corruption dominates.

Besides the wall-clock total, ``cpu_s`` is the CPU time of the run (this process and its
workers): on a machine shared with other jobs, ``cpu_s / workers`` is what the run would take
with the cores to itself.

    python benchmarks/corruption_speed.py [--n 250] [--workers N] [--sample 10] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
from _common import DATA_DIR, write_result
from PIL import Image

from graftkit.robustness.bench import run_corruptions
from graftkit.robustness.corruptions import STANDARD, corrupt_array


def mean_colour_probs(images: list[Image.Image]) -> np.ndarray:
    """A trivial 2-class 'model': redder than blue -> class 0."""
    m = np.array([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]) / 255
    logits = np.stack([m[:, 0] - m[:, 2], m[:, 2] - m[:, 0]], axis=1)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def load(data: Path, n: int) -> tuple[list[Image.Image], np.ndarray]:
    images, targets = [], []
    for split in ("val", "train"):
        for label, cls in enumerate(("ants", "bees")):
            for f in sorted((data / split / cls).glob("*.jpg")):
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
                targets.append(label)
    order = np.random.default_rng(0).permutation(len(images))[:n]
    return [images[i] for i in order], np.array(targets)[order]


def cpu_seconds() -> float:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA_DIR / "hymenoptera_256")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--sample", type=int, default=10, help="images for the per-image cost")
    args = ap.parse_args()

    images, targets = load(args.data, args.n)
    n, sevs = len(images), [1, 2, 3, 4, 5]
    per_corruption = n * len(sevs)

    done, marks = 0, []
    load_before, cpu0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()

    def progress(k: int) -> None:
        nonlocal done
        done += k
        while done >= n + per_corruption * (len(marks) + 1):
            marks.append(time.perf_counter())

    results = run_corruptions(mean_colour_probs, images, targets, STANDARD, sevs,
                              workers=args.workers, batch_size=32, progress=progress)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    starts = [t0, *marks[:-1]]
    wall = {name: round(end - start, 2) for name, start, end in zip(STANDARD, starts, marks)}

    cost = {}
    for name in STANDARD:
        corrupt_array(images[0], name, 1)  # one-off set-up (glass_blur's numba JIT compile)
        t = time.perf_counter()
        for i, im in enumerate(images[:args.sample]):
            for sev in sevs:
                corrupt_array(im, name, sev, seed=i)
        cost[name] = round(1000 * (time.perf_counter() - t) / (args.sample * len(sevs)), 1)

    print(f"{n} images x {len(STANDARD)} corruptions x {len(sevs)} severities = "
          f"{n * len(STANDARD) * len(sevs)} corrupted images, {args.workers} workers")
    print(f"{'corruption':20s} {'wall_s':>8s} {'ms/image (1 core)':>18s}")
    for name in STANDARD:
        print(f"{name:20s} {wall[name]:8.2f} {cost[name]:18.1f}")
    print(f"{'total':20s} {total:8.2f}   ({n * len(STANDARD) * len(sevs) / total:.0f} images/s; "
          f"clean acc {results['clean_accuracy']:.3f}, mCA {results['mca']:.3f})")
    print(f"{'cpu_s':20s} {cpu:8.2f}   (1-min load average before the run: {load_before:.1f})")
    out = write_result("corruption_speed", {
        "images": n, "image_size": "hymenoptera_256 as stored (short side 256 px)",
        "corruptions": len(STANDARD), "severities": sevs, "workers": args.workers,
        "total_s": round(total, 2), "cpu_s": round(cpu, 2),
        "load_average_before": round(load_before, 2),
        "images_per_s": round(n * len(STANDARD) * len(sevs) / total),
        "wall_s": wall, "ms_per_image_one_core": cost, "sample_images": args.sample,
        "clean_accuracy": results["clean_accuracy"], "mca": results["mca"],
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
