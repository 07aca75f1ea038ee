"""Labeled text: reading CSVs robustly, token-length statistics, the dataset and its collation.

``read_text_csv`` never crashes on a bad row; it skips the row and says why:

* bytes that are not UTF-8 in the text or label: the row is **skipped** (decoding it with
  replacement characters would feed the model ``[UNK]`` noise under a label that was given for
  the real text). If most rows are affected the file is in another encoding (latin-1, cp1252):
  a :class:`DataError` says to re-save it as UTF-8, rather than silently dropping most of it;
* an empty or whitespace-only text, a missing or empty label: skipped;
* blank lines are ignored; a UTF-8 byte-order mark is tolerated;
* a field over 131,072 characters (csv's usual limit): the row is skipped;
* a CSV without the named columns: a :class:`DataError` naming the columns it has.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .spec import MAX_FIELD, oversized, typed_target, wide_csv_fields

_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # undecodable bytes, as surrogateescape keeps them


def texts_in_file(p: Path, text_column: str = "text") -> list[tuple[str, str]]:
    """``(source, text)`` for each text of an unlabeled file: a CSV's ``text_column`` (every
    non-empty row) or a .txt file's non-empty lines; a DataError says what is wrong."""
    if p.suffix.lower() == ".csv":
        # read_text_csv wants a label column; naming the text column twice reuses its checks
        # (columns, UTF-8, empty rows skipped) for an unlabeled file
        rows, _ = read_text_csv(p, text_column, text_column)
        return [(f"{p} row {i}", t) for i, (t, _) in enumerate(rows, 1)]
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text; re-save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    texts = [(f"{p}:{i}", ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip()]
    if not texts:
        raise DataError(f"{p}: no texts in this file (one text per line)")
    return texts


def read_text_csv(
    path: str | Path, text_column: str = "text", label_column: str = "label"
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """``(rows, skipped)``: ``(text, label)`` pairs in file order, and ``{path, row, reason}``
    for every row left out (``row`` is its first line number in the file)."""
    rows, skipped = _read(path, text_column, label_column, None)
    return [(text, label) for text, label, _ in rows], skipped


def read_text_split_csv(
    path: str | Path, text_column: str = "text", label_column: str = "label",
    split_column: str = "split",
) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """As :func:`read_text_csv`, each row with its ``split_column`` value ("" where the row has
    none, or the file no such column), read in the same pass, so that a skipped row cannot shift
    the splits."""
    return _read(path, text_column, label_column, split_column)


def _read(path: str | Path, text_column: str, label_column: str, split_column: str | None
          ) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read CSV {str(p)!r}: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff"),
                                    newline=""))
    with wide_csv_fields():
        return _read_records(p, reader, text_column, label_column, split_column)


def _read_records(p: Path, reader: Any, text_column: str, label_column: str,
                  split_column: str | None
                  ) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"CSV {str(p)!r} is empty")
        header = [h.strip() for h in header]
        for col in (text_column, label_column):
            if col not in header:
                raise DataError(f"CSV {str(p)!r} has no column {col!r} "
                                f"(its columns: {', '.join(header)})")
        ti, li = header.index(text_column), header.index(label_column)
        lowered = [h.lower() for h in header]  # "Split" is the split column too
        si = lowered.index(split_column) if split_column and split_column in lowered else None
        rows: list[tuple[str, str, str]] = []
        skipped: list[dict[str, Any]] = []
        n_records, n_bad_bytes, first_line = 0, 0, reader.line_num + 1
        for record in reader:
            line, first_line = first_line, reader.line_num + 1
            if not any(field.strip() for field in record):
                continue  # a blank line
            n_records += 1
            text = record[ti].strip() if ti < len(record) else ""
            label = record[li].strip() if li < len(record) else ""
            reason = None
            if oversized(record):
                reason = f"a field over {MAX_FIELD} characters"
            elif _NOT_UTF8.search(text) or _NOT_UTF8.search(label):
                n_bad_bytes += 1
                reason = "bytes that are not UTF-8"
            elif not text:
                reason = "empty text"
            elif not label:
                reason = "missing label"
            if reason:
                skipped.append({"path": f"{p}:{line}", "row": line, "reason": reason})
            else:
                split = record[si].strip() if si is not None and si < len(record) else ""
                rows.append((text, label, split))
    except csv.Error as e:
        raise DataError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None
    if n_bad_bytes > n_records / 2:
        raise DataError(f"CSV {str(p)!r} is not UTF-8 ({n_bad_bytes} of {n_records} rows); "
                        "re-save it as UTF-8")
    if not rows:
        why = f" ({skipped[0]['reason']}, ...)" if skipped else ""
        raise DataError(f"CSV {str(p)!r} has no usable rows{why}")
    return rows, skipped


def percentile(values: Sequence[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of a non-empty sequence."""
    xs = sorted(values)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


def token_lengths(texts: Sequence[str], tokenizer: Callable[..., Any]) -> list[int]:
    """Each text's length in tokens, special tokens included, without truncation."""
    ids = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def text_stats(texts: Sequence[str], tokenizer: Callable[..., Any], max_length: int
               ) -> dict[str, float | int]:
    """Token-length statistics for the data report; ``truncated``: texts longer than
    ``max_length`` tokens (they lose their end)."""
    lengths = token_lengths(texts, tokenizer)
    if not lengths:
        return {"n": 0, "mean_tokens": 0.0, "p95_tokens": 0, "max_tokens": 0, "truncated": 0,
                "truncated_fraction": 0.0}
    truncated = sum(n > max_length for n in lengths)
    return {
        "n": len(lengths),
        "mean_tokens": sum(lengths) / len(lengths),
        "p95_tokens": percentile(lengths, 95),
        "max_tokens": max(lengths),
        "truncated": truncated,
        "truncated_fraction": truncated / len(lengths),
    }


WORD_DROP, WORD_SWAP = 0.15, 0.1  # the strong view: words dropped, neighbours swapped


def perturb_words(text: str, drop: float = WORD_DROP, swap: float = WORD_SWAP) -> str:
    """A token-level perturbation of ``text`` (FixMatch's strong view of a text): each
    whitespace token is dropped with probability ``drop`` (one always stays) and each adjacent
    pair swapped with probability ``swap``. Random from torch's generator (seeded per epoch
    and per DataLoader worker)."""
    words = text.split()
    if len(words) < 2:
        return text
    keep = torch.rand(len(words)) >= drop
    if not keep.any():
        keep[int(torch.randint(len(words), (1,)))] = True
    words = [w for w, k in zip(words, keep.tolist()) if k]
    swaps = torch.rand(max(0, len(words) - 1)) < swap
    for i, do in enumerate(swaps.tolist()):
        if do:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


class TextDataset(Dataset):
    """``(text, target)`` pairs -> the same pairs, targets typed (:func:`typed_target`;
    tokenization happens per batch, in collation). ``augment="strong"`` perturbs each text as it
    is read (:func:`perturb_words`)."""

    def __init__(self, items: Sequence[tuple[str, float]], task: str = "classification",
                 augment: str = "none") -> None:
        self.items = [(str(text), typed_target(target, task)) for text, target in items]
        self.strong = augment == "strong"

    def __len__(self) -> int:
        return len(self.items)

    def extraction_order(self) -> list[int]:
        """The items shortest first (by characters, a proxy for tokens): a frozen encoder's
        feature extraction reads them so, and its batches, padded to their longest text, pad
        little (``graftkit.train.features.extract``)."""
        return sorted(range(len(self.items)), key=lambda i: len(self.items[i][0]))

    def __getitem__(self, i: int) -> tuple[str, int | float]:
        text, target = self.items[i]
        return (perturb_words(text), target) if self.strong else (text, target)


class TextCollator:
    """Tokenizes a batch: padded to its longest text, truncated at ``max_length``.

    A small picklable object (the tokenizer, not the model), so DataLoader workers can use it.
    """

    def __init__(self, tokenizer: Callable[..., Any], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> Any:
        """Texts -> a ``BatchEncoding`` of LongTensors (``input_ids``, ``attention_mask``, ...)."""
        return self.tokenizer(list(texts), padding="longest", truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    def __call__(self, batch: Sequence[tuple[str, int | float]]) -> tuple[Any, torch.Tensor]:
        texts, targets = zip(*batch)
        dtype = torch.long if isinstance(targets[0], int) else torch.float32
        return self.encode(texts), torch.tensor(targets, dtype=dtype)
