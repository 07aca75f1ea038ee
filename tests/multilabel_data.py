"""Multi-label sets built from the shared single-label ones, for the multi-label tests and their
benchmark (``benchmarks/multilabel.py``):

* ``image_tiles``: caltech101_10_160 photos tiled 2 x 2 into one image. A two-label tile holds two
  photos of one class on a diagonal and two of another on the other diagonal. A one-label tile
  holds four photos of one class. Labels: the classes shown.
* ``trec_pairs``: TREC questions with both their coarse and fine label (``NUM;NUM:dist``).

Each is written as a CSV manifest with a ``labels`` column of ``;``-separated names and a
``split`` column. Train tiles are built from caltech's train photos, val and test tiles from
alternate halves of its val photos, so no photo is in two splits.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image

TILE = 160  # the tiled image's side; each photo becomes an 80 x 80 quadrant


def _photos(root: Path, split: str, classes: list[str] | None) -> dict[str, list[Path]]:
    """The photos each tile split draws from, by class: caltech's train photos for train; its
    val photos for val (every other one) and test (the others), so no photo is in two splits."""
    dirs = sorted(d for d in (root / ("train" if split == "train" else "val")).iterdir()
                  if d.is_dir())
    keep = slice(None) if split == "train" else slice(0, None, 2) if split == "val" else \
        slice(1, None, 2)
    return {d.name: sorted(d.glob("*.jpg"))[keep] for d in dirs
            if classes is None or d.name in classes}


def _tile(photos: list[Path], out: Path) -> None:
    """Four photos as the quadrants of one TILE x TILE image (top-left, top-right, bottom-left,
    bottom-right)."""
    half = TILE // 2
    canvas = Image.new("RGB", (TILE, TILE))
    for i, p in enumerate(photos):
        with Image.open(p) as im:
            canvas.paste(im.convert("RGB").resize((half, half)), ((i % 2) * half,
                                                                   (i // 2) * half))
    canvas.save(out, quality=92)


def image_tiles(src: Path, dest: Path, n: dict[str, int], classes: list[str] | None = None,
                single: float = 0.25, seed: int = 0) -> Path:
    """``n[split]`` tiled images per split (train from ``src``/train, val and test from halves
    of ``src``/val), written under ``dest`` with ``dest/labels.csv``; ``single`` of them show one
    class, the rest two. Returns the CSV."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in n.items():
        pool = _photos(src, split, classes)
        names = sorted(pool)
        for i in range(count):
            if rng.random() < single:
                a = b = rng.choice(names)
            else:
                a, b = rng.sample(names, 2)
            pa, pb = rng.sample(pool[a], 2 if a != b else 4), rng.sample(pool[b], 2)
            quads = [pa[0], pb[0], pb[1], pa[1]] if a != b else pa
            f = dest / f"{split}-{i:04d}.jpg"
            _tile(quads, f)
            rows.append({"path": f.name, "labels": ";".join(sorted({a, b})), "split": split})
    manifest = dest / "labels.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "labels", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def trec_pairs(src: Path, dest: Path, n_train: int | None = None, n_test: int | None = None,
               seed: int = 0) -> tuple[Path, Path]:
    """TREC's train and test CSVs (a seeded sample of ``n_train`` / ``n_test`` rows, None: all;
    test rows only of fine labels the training rows have) with a ``labels`` column
    ``coarse;fine``; returns (train CSV, test CSV)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    out, known = [], set()
    for name, n in (("train", n_train), ("test", n_test)):
        with (src / f"{name}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if name == "test":  # a fine label the sampled training rows lack cannot be scored
            rows = [r for r in rows if r["label_fine"] in known]
        if n is not None:
            rows = rng.sample(rows, min(n, len(rows)))
        known |= {r["label_fine"] for r in rows}
        f = dest / f"{name}.csv"
        with f.open("w", newline="") as fh:
            w = csv.DictWriter(fh, ["text", "labels"])
            w.writeheader()
            w.writerows({"text": r["text"], "labels": f"{r['label']};{r['label_fine']}"}
                        for r in rows)
        out.append(f)
    return out[0], out[1]
