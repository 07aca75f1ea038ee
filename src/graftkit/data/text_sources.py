"""Labeled text: CSV files of ``text,label`` rows -> a :class:`DataSpec` whose items are
``(text, target)``.

``--data train.csv`` alone is split here (seeded, stratified); ``--val`` and ``--test`` give the
other splits as files; a ``split`` column is honoured as for image manifests. Rows with empty
text, a missing label or bytes that are not UTF-8 are skipped and listed in the data report.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .sources import (
    SPLIT_ALIASES,
    DataSpec,
    label_map,
    split_keys,
    stratified_split,
    target_stats,
)
from .spec import csv_header
from .text import read_text_csv, read_text_split_csv


def is_text_csv(path: str | Path, text_column: str = "text", path_column: str = "path",
                named: bool = False) -> bool:
    """A CSV whose header has the text column and no image-path column; with ``named`` (the user
    chose the text column), any CSV without an image-path column, so that a misspelt text
    column is reported as such."""
    header = csv_header(path)
    if not header:
        return False
    return (named or text_column in header) and path_column not in header


def _read(path: Path, text_column: str, label_column: str, skipped: list[dict]
          ) -> list[tuple[str, str, str | None]]:
    """(text, label, split or None) rows of one file; the split comes from a ``split`` column
    (None for every row when there is none, or none is filled in)."""
    rows, bad = read_text_split_csv(path, text_column, label_column)
    skipped += bad
    if not any(split for _, _, split in rows):
        return [(t, lab, None) for t, lab, _ in rows]
    out: list[tuple[str, str, str | None]] = []
    for text, label, raw in rows:
        if raw.lower() not in SPLIT_ALIASES:
            raise DataError(f"CSV {str(path)!r}: " + (
                f"unknown split {raw!r}; use train, val or test" if raw else
                f"the row of {text[:40]!r} has no split; give every usable row a split (train, "
                "val or test) or drop the split column"))
        out.append((text, label, SPLIT_ALIASES[raw.lower()]))
    return out


def discover_text(
    path: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    task: str = "classification",
    text_column: str = "text",
    label_column: str = "label",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> DataSpec:
    """Read, audit and split labeled text CSVs. Raises :class:`DataError` with a clear line."""
    files = {"train": Path(path).expanduser()}
    if val:
        files["val"] = Path(val).expanduser()
    if test:
        files["test"] = Path(test).expanduser()
    for split, f in files.items():
        if f.is_dir():
            raise DataError(f"{split} data {str(f)!r} is a folder; a text run reads a CSV of "
                            "labeled texts (columns text,label)")
        if not f.is_file():
            raise DataError(f"{split} data {str(f)!r} does not exist")
    skipped: list[dict] = []
    given: dict[str, list[tuple[str, str]]] = {}
    pooled: list[tuple[str, str, str | None]] = []
    for split, f in files.items():
        rows = _read(f, text_column, label_column, skipped)
        if split == "train":
            pooled = rows
        else:
            given[split] = [(t, lab) for t, lab, _ in rows]
    if any(s is not None for _, _, s in pooled):  # a split column in the training file
        for s in ("train", "val", "test"):
            given.setdefault(s, [(t, lab) for t, lab, sp in pooled if sp == s])
        train_rows = given.pop("train")
    else:
        train_rows = [(t, lab) for t, lab, _ in pooled]
    classes, target = label_map([lab for _, lab in train_rows],
                                [lab for rows in given.values() for _, lab in rows], task,
                                str(files["train"]))
    fractions = {"val": 0.0 if "val" in given else val_fraction,
                 "test": 0.0 if "test" in given else test_fraction}
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(split_keys([lab for _, lab in train_rows], task)):
        groups.setdefault(key, []).append(i)
    parts = stratified_split(groups, fractions["val"], fractions["test"], seed)  # type: ignore[arg-type]
    splits: dict[str, list[tuple[str, float]]] = {
        s: [(train_rows[i][0], target(train_rows[i][1])) for g in pc.values() for i in g]
        for s, pc in parts.items()}
    for s, rows in given.items():
        splits[s] = [(t, target(lab)) for t, lab in rows]
    splits = {s: items for s, items in splits.items() if items}
    for s in ("train", "val"):
        if s not in splits:
            raise DataError(f"no {s} examples: give --val FILE or a val_fraction above 0")
    spec = DataSpec(task, classes, splits, "text-csv", str(files["train"]), skipped,
                    modality="text", inline=True)
    if task == "regression":
        spec.target_stats = target_stats([t for _, t in splits["train"]])
    return spec


def discover_text_pool(path: str | Path, text_column: str = "text"
                       ) -> tuple[list[str], list[dict]]:
    """The texts of an unlabeled pool: the text column of a CSV, or the lines of a .txt file
    (one text per line; blank lines are skipped). Returns ``(texts, skipped)``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"unlabeled pool {str(p)!r} does not exist" if not p.exists() else
                        f"unlabeled pool {str(p)!r} is a folder; texts come in a CSV (text "
                        "column) or a .txt file, one text per line")
    if p.suffix.lower() == ".txt":
        try:
            raw = p.read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise DataError(f"cannot read {str(p)!r}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise DataError(f"{str(p)!r} is not UTF-8; re-save it as UTF-8") from None
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
        if not texts:
            raise DataError(f"unlabeled pool {str(p)!r} holds no texts")
        return texts, []
    if p.suffix.lower() != ".csv":
        raise DataError(f"unlabeled pool {str(p)!r}: texts come in a CSV (text column) or a "
                        ".txt file, one text per line")
    rows, skipped = read_text_csv(p, text_column, text_column)  # no label column to require
    return [t for t, _ in rows], skipped
