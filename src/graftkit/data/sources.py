"""Find the labeled examples in a user's data and audit them.

Three layouts are understood:

* ``<root>/<split>/<class>/*`` with split folders ``train`` and ``val`` (or ``valid`` /
  ``validation``), optionally ``test``;
* ``<root>/<class>/*``: split here, seeded and stratified per class;
* a CSV manifest with a path column and a label column (paths relative to the CSV), optionally a
  ``split`` column; for ``task: regression`` the label is a number, for ``task: multilabel``
  (or a ``labels`` column) ``;``-separated names.

Every file is decoded once up front (in as many threads as the thread setting), and what was
decoded is kept for the first pass over the data (:mod:`.decoded`). Unreadable,
truncated, zero-byte and non-image files are skipped and listed in the data report with the
reason; they never crash training.
"""

from __future__ import annotations

import csv
import errno
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import threads
from ..errors import DataError
from .images import BadImage, load_image
from .spec import (  # noqa: F401  (re-exported: the names this module always had)
    MAX_FIELD,
    SPLIT_ALIASES,
    DataSpec,
    _check_classes,
    is_float,
    label_map,
    label_target,
    oversized,
    split_keys,
    stratified_split,
    target_stats,
    wide_csv_fields,
)

MULTILABEL_FOLDERS = ("a folder of class folders gives each file one label; multi-label data "
                      "comes as a CSV manifest with a 'labels' column of ';'-separated names")


def _check_image(p: Path) -> str | None:
    try:
        load_image(p, keep=True)  # kept for the first pass over the data: decoded once
        return None
    except BadImage as e:
        return e.reason


@dataclass(frozen=True)
class FileKind:
    """What the files of a data source are: the noun of messages and the check that decodes one
    (None: usable; else the reason it is skipped). A file modality passes its own."""

    noun: str
    check: Callable[[Path], str | None]


IMAGES = FileKind("image", _check_image)


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def stop(self) -> None: ...


def _audit(paths: list[Path], progress: Progress | None = None, kind: FileKind = IMAGES
           ) -> tuple[list[Path], list[dict[str, str]]]:
    """Decode every file; return the good ones (order kept) and the skipped ones with reasons."""
    check = kind.check
    if progress:
        progress.start(f"checking {kind.noun}s", len(paths))
    try:
        # as many decoding threads as the thread setting (decoding releases the GIL)
        with ThreadPoolExecutor(max_workers=threads.current()) as pool:
            reasons = []
            for r in pool.map(check, paths):  # decoding releases the GIL: threads overlap
                reasons.append(r)
                if progress:
                    progress.advance(1)
    finally:
        if progress:
            progress.stop()
    good = [p for p, r in zip(paths, reasons) if r is None]
    bad = [{"path": str(p), "reason": r} for p, r in zip(paths, reasons) if r is not None]
    return good, bad


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not _is_hidden(d))


def _not_a_file(p: Path) -> str | None:
    """Why ``p`` (not a folder) cannot be read as a file: a dangling or looping symlink, a FIFO,
    a socket or a device; None for a regular file."""
    try:
        st = p.stat()
    except OSError as e:
        if p.is_symlink():
            return "symlink loop" if e.errno == errno.ELOOP else "broken symlink"
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    return "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file (socket or device)"


def _files(d: Path, skipped: list[dict[str, str]]) -> list[Path]:
    """Regular files below ``d``, skipping hidden ones and anything inside hidden folders
    (``.ipynb_checkpoints``, ``.git``, ...); anything else found (a broken symlink, a FIFO) is
    added to ``skipped`` with the reason."""
    files = []
    for p in sorted(d.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(d).parts):
            continue
        why = _not_a_file(p)
        if why:
            skipped.append({"path": str(p), "reason": why})
        elif p.is_file():
            files.append(p)
    return files


def _scan_class_tree(root: Path, progress: Progress | None = None, kind: FileKind = IMAGES
                     ) -> tuple[dict[str, list[Path]], list[dict[str, str]]]:
    dirs = _class_dirs(root)
    skipped: list[dict[str, str]] = []
    for p in sorted(root.iterdir()):
        if not _is_hidden(p) and not p.is_dir():
            why = _not_a_file(p)
            skipped.append({"path": str(p), "reason": why or "file outside any class folder"})
    files = {d.name: _files(d, skipped) for d in dirs}
    good, bad = _audit([p for d in dirs for p in files[d.name]], progress, kind)
    skipped += bad
    usable = set(good)
    per_class: dict[str, list[Path]] = {}
    for d in dirs:
        per_class[d.name] = [p for p in files[d.name] if p in usable]
        if not per_class[d.name]:
            raise DataError(f"class folder {str(d)!r} has no usable {kind.noun}s "
                            f"({len(files[d.name])} skipped)")
    return per_class, skipped


def _children(root: Path) -> dict[str, Path]:
    """The folders of ``root`` by lower-cased name; two that differ only by case are refused."""
    out: dict[str, Path] = {}
    for d in _class_dirs(root):
        if d.name.lower() in out:
            raise DataError(f"{str(root)!r} holds both {out[d.name.lower()].name!r} and "
                            f"{d.name!r}; merge or rename one of them")
        out[d.name.lower()] = d
    return out


def _split_dirs(root: Path, children: dict[str, Path]) -> dict[str, Path]:
    """Split name -> folder; two folders of one split (``val`` and ``valid``) are refused."""
    out: dict[str, Path] = {}
    for k, d in children.items():
        if k in SPLIT_ALIASES:
            split = SPLIT_ALIASES[k]
            if split in out:
                raise DataError(f"{str(root)!r} holds both {out[split].name!r} and {d.name!r} as "
                                f"the {split} split; keep one of them")
            out[split] = d
    return out


def _from_folders(
    root: Path, val_fraction: float, test_fraction: float, seed: int,
    progress: Progress | None = None, kind: FileKind = IMAGES,
) -> DataSpec:
    children = _children(root)
    split_dirs = _split_dirs(root, children)
    if "train" in split_dirs and len(split_dirs) >= 2:
        layout = "split-folders"
        extra = sorted(set(children) - set(SPLIT_ALIASES))
        if extra:
            raise DataError(
                f"{str(root)!r} mixes split folders with other folders ({', '.join(extra)}); "
                "use <root>/<split>/<class>/ or <root>/<class>/"
            )
        per_split: dict[str, dict[str, list[Path]]] = {}
        skipped: list[dict[str, str]] = []
        for split, d in split_dirs.items():
            per_split[split], bad = _scan_class_tree(d, progress, kind)
            skipped += bad
        classes = sorted(per_split["train"])
        _check_classes(classes, str(split_dirs["train"]))
        if "val" not in per_split:  # train (+ test) given: carve a stratified val out of train
            carved = stratified_split(per_split["train"], val_fraction or 0.2, 0.0, seed)
            per_split["train"], per_split["val"] = carved["train"], carved["val"]
        for split, per_class in per_split.items():
            unknown = sorted(set(per_class) - set(classes))
            if unknown:
                raise DataError(
                    f"class folder {str(split_dirs[split] / unknown[0])!r} is in {split} but not "
                    f"in train; every class needs training {kind.noun}s"
                )
    else:
        layout = "class-folders"
        per_class, skipped = _scan_class_tree(root, progress, kind)
        classes = sorted(per_class)
        _check_classes(classes, str(root))
        per_split = stratified_split(per_class, val_fraction, test_fraction, seed)
        if not any(per_split["val"].values()):
            raise DataError(f"val_fraction={val_fraction} leaves no validation {kind.noun}s")
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        split: [(str(p), float(index[c])) for c in sorted(pc) for p in pc[c]]
        for split, pc in per_split.items()
        if any(pc.values())
    }
    return DataSpec("classification", classes, splits, layout, str(root), skipped)


def _from_csv(
    csv_path: Path,
    task: str,
    path_column: str,
    label_column: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    progress: Progress | None = None,
    kind: FileKind = IMAGES,
) -> DataSpec:
    rows = _read_rows(csv_path)
    columns = ", ".join(rows[0])
    if path_column not in rows[0]:  # neither an image manifest nor (detection said) a text CSV
        raise DataError(
            f"CSV {str(csv_path)!r} has no {kind.noun} path column {path_column!r} and no text "
            f"column (columns: {columns}); name yours with data.path_column for files, or "
            "--text-column (data.text_column) for texts")
    if label_column not in rows[0]:
        raise DataError(f"CSV {str(csv_path)!r} has no column {label_column!r} (columns: "
                        f"{columns}); set data.label_column")
    base = csv_path.parent
    skipped: list[dict[str, str]] = []
    entries: list[tuple[Path, str, str | None]] = []
    for i, row in enumerate(rows, start=2):
        if oversized(v for v in row.values() if isinstance(v, str)):
            skipped.append({"path": f"{csv_path}:{i}", "reason": f"a field over {MAX_FIELD} "
                            "characters"})
            continue
        raw_path = (row.get(path_column) or "").strip()
        label = (row.get(label_column) or "").strip()
        if not raw_path or not label:
            skipped.append({"path": f"{csv_path}:{i}", "reason": "empty path or label"})
            continue
        p = Path(raw_path)
        p = p if p.is_absolute() else base / p
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLIT_ALIASES:
            raise DataError(f"{csv_path}:{i}: unknown split {split!r}; use train, val or test")
        if "split" in row and split is None:
            raise DataError(f"{csv_path}:{i}: the split column is empty; give every row train, "
                            "val or test, or drop the column to split automatically")
        entries.append((p, label, SPLIT_ALIASES[split] if split else None))
    good, bad = _audit([p for p, _, _ in entries], progress, kind)
    skipped += bad
    good_set = {str(p) for p in good}
    entries = [e for e in entries if str(e[0]) in good_set]
    if not entries:
        why = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise DataError(f"CSV {str(csv_path)!r}: none of its {len(rows)} rows is a usable "
                        f"{kind.noun}"
                        f"{why}")
    classes, target = label_map([lab for _, lab, s in entries if s in (None, "train")],
                                [lab for _, lab, s in entries if s in ("val", "test")], task,
                                str(csv_path))
    # each row keeps its own target (a file listed twice with two labels is a label conflict
    # for the audit to see, not the last row's label twice); rows are split by position
    def rows_of(idx: list[int]) -> list[tuple[str, Any]]:
        return [(str(entries[i][0]), target(entries[i][1])) for i in idx]

    def by_label(idx: list[int]) -> dict[str, list[int]]:
        keys: dict[str, list[int]] = {}
        for i, key in zip(idx, split_keys([entries[i][1] for i in idx], task)):
            keys.setdefault(key, []).append(i)
        return keys

    has_split_col = any(s is not None for _, _, s in entries)
    if has_split_col:
        splits = {s: rows_of([i for i, e in enumerate(entries) if e[2] == s])
                  for s in ("train", "val", "test")}
    else:
        parts = stratified_split(by_label(list(range(len(entries)))), val_fraction,
                                 test_fraction, seed)
        splits = {s: rows_of([i for group in pc.values() for i in group])
                  for s, pc in parts.items()}
    splits = {s: items for s, items in splits.items() if items}
    if has_split_col and "train" in splits and "val" not in splits:
        # train (+ test) given, as split folders may be: a stratified val is carved out of train
        train = [i for i, e in enumerate(entries) if e[2] == "train"]
        parts = stratified_split(by_label(train), val_fraction or 0.2, 0.0, seed)
        for s in ("train", "val"):
            splits[s] = rows_of([i for group in parts[s].values() for i in group])
        splits = {s: items for s, items in splits.items() if items}
    for s in ("train", "val"):
        if s not in splits:
            raise DataError(f"CSV {str(csv_path)!r} gives no {s} examples")
    spec = DataSpec(task, classes, splits, "csv", str(csv_path), skipped)
    if task == "regression":
        spec.target_stats = target_stats([t for _, t in splits["train"]])
    return spec


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts (a BOM is tolerated); a DataError if unreadable or empty."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f, wide_csv_fields():
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV {str(path)!r}: {e}") from None
    if not rows:
        raise DataError(f"CSV {str(path)!r} has no rows")
    named = [k for k in rows[0] if k is not None and k.strip().lower() == "split"]
    if named and "split" not in rows[0]:  # "Split" or " split": the split column all the same
        rows = [{("split" if k == named[0] else k): v for k, v in r.items()} for r in rows]
    return rows


def discover(
    path: str | Path,
    *,
    task: str = "classification",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    path_column: str = "path",
    label_column: str = "label",
    progress: Progress | None = None,
    kind: FileKind = IMAGES,
) -> DataSpec:
    """Find, audit and split the data at ``path``. Raises :class:`DataError` with a clear line.
    ``progress`` (start/advance/stop, e.g. graftkit's Reporter) shows the audit as it goes."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(f"data path {str(p)!r} is a file but not a CSV manifest")
        return _from_csv(p, task, path_column, label_column, val_fraction, test_fraction, seed,
                         progress, kind)
    if task == "regression":
        raise DataError("task: regression needs a CSV manifest with a numeric target column")
    if task == "multilabel":
        raise DataError(MULTILABEL_FOLDERS)
    return _from_folders(p, val_fraction, test_fraction, seed, progress, kind)


def discover_pool(path: str | Path, *, path_column: str = "path",
                  progress: Progress | None = None, kind: FileKind = IMAGES
                  ) -> tuple[list[str], list[dict[str, str]]]:
    """The inputs of an unlabeled pool: every file below a folder (in any layout; folder names
    are not read as labels), or the path column of a CSV (paths relative to it). Unusable files
    are skipped and returned with the reason, as for labeled data."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"unlabeled pool {str(p)!r} does not exist")
    skipped: list[dict[str, str]] = []
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(f"unlabeled pool {str(p)!r} is a file but not a CSV of "
                            f"{kind.noun} paths; give a folder or a CSV")
        rows = _read_rows(p)
        if path_column not in rows[0]:
            raise DataError(f"CSV {str(p)!r} has no {kind.noun} path column {path_column!r} "
                            f"(columns: {', '.join(rows[0])}); set data.path_column")
        files = []
        for i, row in enumerate(rows, start=2):
            raw = (row.get(path_column) or "").strip()
            if not raw:
                skipped.append({"path": f"{p}:{i}", "reason": "empty path"})
                continue
            f = Path(raw)
            files.append(f if f.is_absolute() else p.parent / f)
    else:
        files = _files(p, skipped)
    good, bad = _audit(files, progress, kind)
    skipped += bad
    if not good:
        raise DataError(f"unlabeled pool {str(p)!r} holds no usable {kind.noun}s "
                        f"({len(skipped)} skipped)")
    return [str(g) for g in good], skipped


def discover_eval(
    path: str | Path,
    classes: list[str],
    *,
    task: str = "classification",
    split: str | None = None,
    path_column: str = "path",
    label_column: str = "label",
    kind: FileKind = IMAGES,
) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    """Labeled examples to evaluate a trained run on, with the run's own label map.

    A folder with split subfolders uses ``split`` (default: test if present, else val); a folder of
    class folders or a CSV is used whole (a CSV ``split`` column is honoured when ``split`` is set).
    Returns ``(items, skipped, split_used)``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    index = {c: i for i, c in enumerate(classes)}
    if p.is_file():
        return _eval_csv(p, index, task, split, path_column, label_column, kind)
    children = _children(p)
    split_dirs = _split_dirs(p, children)
    if set(children) - set(SPLIT_ALIASES):  # a class named "train" beside others, as training
        split_dirs = {}  # reads such a folder: class folders
    used = "all"
    if split_dirs:
        default = "test" if "test" in split_dirs else "val" if "val" in split_dirs else "train"
        used = split or default
        if used not in split_dirs:
            raise DataError(f"{str(p)!r} has no {used!r} split folder ({', '.join(split_dirs)})")
        p = split_dirs[used]
    elif split:
        raise DataError(f"{str(p)!r} has no split folders; drop --split to use it whole")
    if task == "regression":
        raise DataError("a regression run is evaluated on a CSV manifest, not a folder")
    if task == "multilabel":
        raise DataError(MULTILABEL_FOLDERS)
    per_class, skipped = _scan_class_tree(p, kind=kind)
    for name in per_class:
        if name not in index:
            raise DataError(
                f"class folder {str(p / name)!r} is not a class of this run ({', '.join(classes)})"
            )
    items = [(str(f), float(index[c])) for c in sorted(per_class) for f in per_class[c]]
    return items, skipped, used


def _eval_csv(
    p: Path, index: dict[str, int], task: str, split: str | None, path_column: str,
    label_column: str, kind: FileKind = IMAGES,
) -> tuple[list[tuple[str, float]], list[dict[str, str]], str]:
    rows = _read_rows(p)
    if path_column not in rows[0] or label_column not in rows[0]:
        raise DataError(f"CSV {str(p)!r} needs columns {path_column!r} and {label_column!r} "
                        f"(it has {', '.join(rows[0])}): this run reads {kind.noun} files, "
                        f"and the CSV lists them with their labels")
    entries: list[tuple[Path, float]] = []
    empty: list[dict[str, str]] = []
    for i, r in enumerate(rows, start=2):  # (line numbers of the file, before any filter)
        if split and SPLIT_ALIASES.get((r.get("split") or "").strip().lower()) != split:
            continue
        label, raw = (r.get(label_column) or "").strip(), (r.get(path_column) or "").strip()
        if not raw or not label:  # as training skips it
            empty.append({"path": f"{p}:{i}", "reason": "empty path or label"})
            continue
        f = Path(raw)
        f = f if f.is_absolute() else p.parent / f
        entries.append((f, label_target(label, index, task, f"{p}:{i}")))
    if split and not entries and not empty:
        raise DataError(f"CSV {str(p)!r} has no rows with split {split!r}")
    good, skipped = _audit([f for f, _ in entries], kind=kind)
    ok = {str(g) for g in good}
    return [(str(f), t) for f, t in entries if str(f) in ok], empty + skipped, split or "all"
