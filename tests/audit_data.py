"""Corrupted copies of the shared datasets with known problems, for the audit's test and its
benchmark (``benchmarks/audit.py``): leaks across splits (some re-encoded and resized), exact
duplicates, flipped labels; and what the audit found of them."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path
from typing import Any

from PIL import Image


def image_copy(src: Path, dest: Path, n: int = 10, per_class: int | None = None, seed: int = 0
               ) -> dict[str, list[Any]]:
    """``src`` (``train/<class>/``, ``val/<class>/``) copied to ``dest`` (at most ``per_class``
    files per class and split), then: ``n`` train images copied into val (every other one
    re-encoded at JPEG quality 60 and resized to 80%), ``n`` others duplicated inside train, ``n``
    others moved to another class folder. Returns the planted pairs and files."""
    rng = random.Random(seed)
    for split in ("train", "val"):
        for cls_dir in sorted((src / split).iterdir()):
            files = sorted(cls_dir.glob("*.jpg"))[:per_class]
            (dest / split / cls_dir.name).mkdir(parents=True)
            for f in files:
                shutil.copy(f, dest / split / cls_dir.name / f.name)
    classes = sorted(p.name for p in (dest / "train").iterdir())
    train = sorted((dest / "train").rglob("*.jpg"))
    picked = rng.sample(train, 3 * n)
    leaks, dups, flips = [], [], []
    for i, f in enumerate(picked[:n]):
        copy = dest / "val" / f.parent.name / f"leak_{i}.jpg"
        if i % 2:
            with Image.open(f) as im:
                im.convert("RGB").resize((im.width * 4 // 5, im.height * 4 // 5)).save(
                    copy, quality=60)
        else:
            shutil.copy(f, copy)
        leaks.append((str(f), str(copy)))
    for i, f in enumerate(picked[n:2 * n]):
        copy = f.parent / f"dup_{i}.jpg"
        shutil.copy(f, copy)
        dups.append((str(f), str(copy)))
    for i, f in enumerate(picked[2 * n:]):
        other = classes[(classes.index(f.parent.name) + 1) % len(classes)]
        moved = dest / "train" / other / f"flip_{i}.jpg"
        f.rename(moved)
        flips.append(str(moved))
    return {"leaks": leaks, "duplicates": dups, "flips": flips}


def text_copy(src: Path, dest: Path, n: int = 10, rows: int | None = None, seed: int = 0
              ) -> dict[str, list[Any]]:
    """sms_spam's train.csv and test.csv (the first ``rows`` of each) copied to ``dest``, with
    ``n`` train messages added to test (every other one with changed case and punctuation)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True)
    tables = {}
    for name in ("train", "test"):
        with (src / f"{name}.csv").open(newline="", encoding="utf-8") as f:
            tables[name] = list(csv.DictReader(f))[:rows]
    seen: dict[str, int] = {}
    for r in tables["train"] + tables["test"]:
        seen[r["text"]] = seen.get(r["text"], 0) + 1
    # messages that appear once, as they are read (no surrounding spaces: graft strips them)
    unique = [r for r in tables["train"] if seen[r["text"]] == 1 and len(r["text"]) > 20
              and r["text"] == r["text"].strip()]
    leaks = []
    for i, r in enumerate(rng.sample(unique, n)):
        text = r["text"].upper() + "!!" if i % 2 else r["text"]
        tables["test"].append({"text": text, "label": r["label"]})
        leaks.append((r["text"], text))
    for name, table in tables.items():
        with (dest / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(table)
    return {"leaks": leaks}


def scored(audit: dict[str, Any], planted: dict[str, list[Any]], top: int = 20
           ) -> dict[str, int]:
    """How many of the planted problems ``audit`` (audit.json) found: leak pairs in a leak or
    near-leak finding, duplicate pairs in an exact-duplicate finding, flipped files among the
    ``top`` label issues."""
    groups = {k: [set(f["items"]) for f in audit["findings"] if f["kind"] in kinds]
              for k, kinds in (("leaks", ("leak", "near_leak")),
                               ("duplicates", ("exact_duplicate",)))}
    out = {k: sum(any({a, b} <= g for g in groups[k]) for a, b in planted.get(k, []))
           for k in groups}
    issues = [f["items"][0] for f in audit["findings"] if f["kind"] == "label_issue"][:top]
    out["flips"] = len(set(issues) & set(planted.get("flips", [])))
    out["leak_findings"] = sum(f["kind"] in ("leak", "near_leak") for f in audit["findings"])
    return out
