"""The data of a run: its splits of ``(input, target)`` items (:class:`DataSpec`), the seeded
stratified split, and the one label -> target map every labeled source uses."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

# csv's default field limit: a longer field is a row skipped (and reported), not a refused file
MAX_FIELD = 131_072


@contextmanager
def wide_csv_fields() -> Iterator[None]:
    """Let the csv module read fields of any length for a while (the limit is process-wide), so
    one oversized field is a row to skip rather than a ``csv.Error`` for the whole file."""
    old = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def oversized(fields: Iterable[str]) -> bool:
    return any(len(f) > MAX_FIELD for f in fields)


LABEL_SEPARATOR = ";"  # a multi-label row's names: "cat;dog"
MULTILABEL_COLUMN = "labels"  # a CSV with this column (and no "label") is a multi-label one


def csv_header(path: str | Path) -> list[str]:
    """The column names of a CSV file ([] when it is not a readable CSV)."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix.lower() != ".csv":
        return []
    try:
        with p.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, csv.Error):
        return []


def names_of(label: str) -> list[str]:
    """The label names of a multi-label cell, ``"b; a;b"`` -> ``["a", "b"]``."""
    return sorted({n.strip() for n in label.split(LABEL_SEPARATOR) if n.strip()})


SPLIT_ALIASES = {
    "train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
}


@dataclass
class DataSpec:
    """The examples of every split, as ``(path, target)``; targets are class indices, floats
    (regression) or, for ``multilabel``, tuples of 0/1 floats, one per class."""

    task: str
    classes: list[str]
    splits: dict[str, list[tuple[str, float]]]
    layout: str
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    target_stats: dict[str, float] = field(default_factory=dict)  # regression: mean/std of train
    modality: str = "image"  # the modality registered under this name (graftkit.modalities)
    inline: bool = False  # items are the inputs themselves (texts), not paths of files
    # a semi-supervised run's unlabeled inputs: what the model must also read (input lengths
    # and windows are chosen over the training split and these)
    unlabeled: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Content key of the data: every file's path, size and mtime (or every text), its split
        and target."""
        return items_fingerprint({s: self.splits[s] for s in sorted(self.splits)}, self.inline)

    def report(self) -> dict:
        counts: dict[str, dict[str, int] | int] = {}
        for split, items in self.splits.items():
            if self.task == "classification":
                c = Counter(int(t) for _, t in items)
                counts[split] = {self.classes[i]: c.get(i, 0) for i in range(len(self.classes))}
            elif self.task == "multilabel":  # examples carrying each label
                sums = [sum(t[i] for _, t in items) for i in range(len(self.classes))]
                counts[split] = {c: int(n) for c, n in zip(self.classes, sums)}
            else:
                counts[split] = len(items)
        return {
            "source": self.source,
            "modality": self.modality,
            "layout": self.layout,
            "task": self.task,
            "classes": self.classes,
            "counts": counts,
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
            "target_stats": self.target_stats,
        }


def items_fingerprint(groups: dict[str, Sequence[tuple[str, float]]], inline: bool) -> str:
    """A content key of ``(input, target)`` items by group: each file's path, size and mtime
    (or each text), its group and target."""
    h = hashlib.sha256()
    for group, items in groups.items():
        for item, target in items:
            if inline:
                h.update(f"{group}\0{item}\0{target}\n".encode())
                continue
            st = os.stat(item)
            h.update(f"{group}\0{item}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class UnlabeledPool:
    """The unlabeled inputs of a semi-supervised run. ``hidden`` are their true targets where
    they are known (``data.unlabeled_rest``: the training examples ``data.shots`` left out):
    never trained on, only used to report how precise the pseudo-labels were."""

    items: list[str]
    sources: list[str]
    hidden: list[float] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    inline: bool = False

    def fingerprint(self) -> str:
        return items_fingerprint({"unlabeled": [(i, 0.0) for i in self.items]}, self.inline)

    def report(self) -> dict:
        return {"sources": self.sources, "n": len(self.items), "labels_hidden": self.hidden
                is not None, "n_skipped": len(self.skipped), "skipped": self.skipped[:200]}


def take_shots(items: Sequence[tuple[str, float]], shots: int, seed: int
               ) -> tuple[list[tuple[str, float]], list[tuple[str, float]], list[int]]:
    """``shots`` items per class (shuffled with ``seed``, per class), the rest, and the classes
    that had fewer (all of theirs are kept)."""
    by_class: dict[int, list[tuple[str, float]]] = {}  # classification only (launch checks)
    for item in items:
        by_class.setdefault(int(item[1]), []).append(item)
    kept, rest, short = [], [], []
    for c in sorted(by_class):
        group = list(by_class[c])
        random.Random(f"shots:{seed}:{c}").shuffle(group)
        kept += group[:shots]
        rest += group[shots:]
        if len(group) < shots:
            short.append(c)
    return kept, rest, short


def _check_classes(classes: list[str], where: str) -> None:
    if not classes:
        raise DataError(f"no class folders found in {where!r}: expected <class>/<image> folders")
    if len(classes) < 2:
        raise DataError(
            f"only one class ({classes[0]!r}) found in {where!r}: classification needs at least 2"
        )


def stratified_split(
    per_class: dict[str, list[Path]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, dict[str, list[Path]]]:
    """Per class: shuffle with ``seed``, then cut test and val; train keeps at least one item."""
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for name, items in per_class.items():
        items = list(items)
        random.Random(f"{seed}:{name}").shuffle(items)
        n = len(items)
        n_test = min(n - 1, math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
        n_val = min(n - 1 - n_test, math.floor(n * val_fraction + 0.5)) if val_fraction > 0 else 0
        if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
            n_val = 1
        out["test"][name] = items[:n_test]
        out["val"][name] = items[n_test : n_test + n_val]
        out["train"][name] = items[n_test + n_val :]
    return out


def target_stats(ys: list[float]) -> dict[str, float]:
    """Mean and standard deviation of regression targets (training standardises with them)."""
    mean = sum(ys) / len(ys)
    std = math.sqrt(sum((y - mean) ** 2 for y in ys) / max(1, len(ys) - 1)) or 1.0
    return {"mean": mean, "std": std}


def label_map(train: list[str], others: list[str], task: str, where: str
              ) -> tuple[list[str], Callable[[str], Any]]:
    """The classes of a labeled CSV (its training labels, sorted) and its label -> target map
    (the class index; for regression, the number; for multilabel, a 0/1 tuple over the classes
    from ``;``-separated names), checking every label of ``train`` and of ``others`` (its
    val/test rows)."""
    if task == "multilabel":
        classes = sorted({n for lab in train for n in names_of(lab)})
        _check_classes(classes, where)
        unknown = sorted({n for lab in others for n in names_of(lab)} - set(classes))
        if unknown:
            raise DataError(f"label {unknown[0]!r} appears in val/test but not in the training "
                            f"data ({where!r}); every label needs training examples")
        index = {c: i for i, c in enumerate(classes)}
        return classes, lambda label: multi_hot(names_of(label), index)
    if task == "regression":
        bad = next((lab for lab in [*train, *others] if not is_float(lab)), None)
        if bad is not None:
            raise DataError(f"task is regression but label {bad!r} in {where!r} is not a finite "
                            "number")
        return [], float
    classes = sorted(set(train))
    _check_classes(classes, where)
    unknown = sorted(set(others) - set(classes))
    if unknown:
        raise DataError(f"label {unknown[0]!r} appears in val/test but not in the training data "
                        f"({where!r}); every class needs training examples")
    index = {c: i for i, c in enumerate(classes)}
    return classes, lambda label: float(index[label])


def multi_hot(names: Sequence[str], index: dict[str, int]) -> tuple[float, ...]:
    hot = [0.0] * len(index)
    for n in names:
        hot[index[n]] = 1.0
    return tuple(hot)


def split_keys(labels: Sequence[str], task: str) -> list[str]:
    """The stratum of each row for a seeded split: its label (classification), one stratum
    (regression), or its rarest name among these rows (multilabel, so that a rare label reaches
    val too)."""
    if task == "regression":
        return ["all"] * len(labels)
    if task != "multilabel":
        return list(labels)
    count = Counter(n for lab in labels for n in names_of(lab))
    return [min(names_of(lab), key=lambda n: (count[n], n)) if names_of(lab) else ""
            for lab in labels]


def label_target(label: str, index: dict[str, int], task: str, where: str) -> Any:
    """A CSV label as a target: its class index in ``index``, the number (regression), or the
    0/1 tuple of its names (multilabel)."""
    if task == "multilabel":
        unknown = [n for n in names_of(label) if n not in index]
        if unknown:
            raise DataError(f"{where}: label {unknown[0]!r} is not a label of this run "
                            f"({', '.join(index)})")
        return multi_hot(names_of(label), index)
    if task == "regression":
        if not is_float(label):
            raise DataError(f"{where}: target {label!r} is not a number")
        return float(label)
    if label not in index:
        raise DataError(f"{where}: label {label!r} is not a class of this run "
                        f"({', '.join(index)})")
    return float(index[label])


def typed_target(target: Any, task: str) -> int | float | tuple[float, ...]:
    """A target as datasets hand it to collation: the class index (classification), the 0/1
    tuple (multilabel, a float vector once batched) or the number (regression)."""
    if task == "classification":
        return int(target)
    return tuple(float(v) for v in target) if task == "multilabel" else float(target)


def is_float(s: str) -> bool:
    """A finite number (``nan`` and ``inf`` parse as floats but cannot be regression targets)."""
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False
