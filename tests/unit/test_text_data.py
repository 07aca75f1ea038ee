"""Reading labeled text CSVs robustly; token-length statistics; the max-length rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graftkit.data.text import (
    TextCollator,
    TextDataset,
    percentile,
    read_text_csv,
    text_stats,
)
from graftkit.errors import DataError


def _csv(tmp_path: Path, body: bytes, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(body)
    return p


def test_non_utf8_rows_are_skipped_and_reported(tmp_path: Path) -> None:
    p = _csv(tmp_path, "text,label\nhello,ham\ncaf\u00e9 \u00a31000,spam\n".encode()
             + b"win \xa31000 now,spam\n\xff\xfe,ham\nsee you,ham\n")
    rows, skipped = read_text_csv(p)
    assert rows == [("hello", "ham"), ("caf\u00e9 \u00a31000", "spam"), ("see you", "ham")]
    assert [(s["row"], s["reason"]) for s in skipped] == [
        (4, "bytes that are not UTF-8"), (5, "bytes that are not UTF-8")]
    assert skipped[0]["path"] == f"{p}:4"


def test_a_file_in_another_encoding_is_an_error(tmp_path: Path) -> None:
    body = "text,label\nna\u00efve,a\ncaf\u00e9,b\nr\u00e9sum\u00e9,a\n"
    p = _csv(tmp_path, body.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*re-save"):
        read_text_csv(p)


def test_empty_texts_and_missing_labels_are_skipped(tmp_path: Path) -> None:
    body = ('\ufefftext,label\n"a ""quoted""\nmulti-line text",x\n\n   ,x\n"",y\nno label\n'
            'blank label,  \nfine,y\n')
    rows, skipped = read_text_csv(_csv(tmp_path, body.encode()))
    assert rows == [('a "quoted"\nmulti-line text', "x"), ("fine", "y")]
    assert [(s["row"], s["reason"]) for s in skipped] == [
        (5, "empty text"), (6, "empty text"), (7, "missing label"), (8, "missing label")]


def test_missing_column_names_the_columns_it_has(tmp_path: Path) -> None:
    p = _csv(tmp_path, b"sentence,label,label_fine\nhi,a,a:b\n")
    with pytest.raises(DataError, match=r"no column 'text' \(its columns: sentence, label, "):
        read_text_csv(p)
    rows, _ = read_text_csv(p, text_column="sentence", label_column="label_fine")
    assert rows == [("hi", "a:b")]


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        read_text_csv(_csv(tmp_path, b""))
    with pytest.raises(DataError, match="no usable rows"):
        read_text_csv(_csv(tmp_path, b"text,label\n  ,a\n"))
    with pytest.raises(DataError, match="cannot read"):
        read_text_csv(tmp_path / "absent.csv")


def _whitespace_tokenizer(texts: list[str], **_: object) -> dict[str, list[list[int]]]:
    return {"input_ids": [[101, *range(len(t.split())), 102] for t in texts]}  # + [CLS], [SEP]


def test_text_stats_counts_truncation() -> None:
    texts = ["one", "one two three", "w " * 10, "w " * 30]  # 3, 5, 12, 32 tokens
    s = text_stats(texts, _whitespace_tokenizer, max_length=12)
    assert s == {"n": 4, "mean_tokens": 13.0, "p95_tokens": 32, "max_tokens": 32,
                 "truncated": 1, "truncated_fraction": 0.25}
    assert text_stats(texts, _whitespace_tokenizer, max_length=4)["truncated"] == 3
    assert text_stats([], _whitespace_tokenizer, 8)["n"] == 0


def test_percentile_is_nearest_rank() -> None:
    xs = list(range(1, 101))
    assert (percentile(xs, 95), percentile(xs, 99), percentile(xs, 100)) == (95, 99, 100)
    assert percentile([7], 50) == 7


def test_dataset_types_targets_and_collator_types_tensors() -> None:
    cls = TextDataset([("a", 1.0), ("b", 0.0)], "classification")
    reg = TextDataset([("a", 1.5)], "regression")
    assert cls[0] == ("a", 1) and isinstance(cls[0][1], int) and len(cls) == 2
    assert reg[0] == ("a", 1.5)

    def tok(texts: list[str], **kw: object) -> dict[str, object]:
        return {"texts": texts, **kw}

    x, y = TextCollator(tok, 16)([cls[0], cls[1]])
    assert y.dtype == torch.long and x["max_length"] == 16 and x["padding"] == "longest"
    assert TextCollator(tok, 16)([reg[0]])[1].dtype == torch.float32


def test_choose_max_length_from_the_length_distribution() -> None:
    from graftkit.models.text import choose_max_length

    assert choose_max_length(list(range(1, 101))) == 104  # p99 = 99, up to a multiple of 8
    assert choose_max_length([5] * 50) == 16  # at least 16
    assert choose_max_length([3000] * 10, limit=512) == 512  # at most the model's positions
    assert choose_max_length([40] * 99 + [5000]) == 40  # one outlier does not set it
    assert choose_max_length([]) == 16


def test_a_split_column_stays_with_its_rows_when_rows_are_skipped(tmp_path: Path) -> None:
    from graftkit.data.text_sources import discover_text

    rows = ["text,label,split", "alpha one,x,train", "beta two,,train", "delta four,x,train",
            "eps five,y,train", "zeta six,x,val", "eta seven,y,val"]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    spec = discover_text(tmp_path / "a.csv")  # the row without a label is skipped, not fatal
    assert [t for t, _ in spec.splits["val"]] == ["zeta six", "eta seven"]
    assert sorted(t for t, _ in spec.splits["train"]) == ["alpha one", "delta four", "eps five"]
    assert [s["reason"] for s in spec.skipped] == ["missing label"]
    # a skipped row and a row with no split used to pair up, shifting the splits silently
    rows[2], rows[3] = "beta two,,val", "gamma three,y,"
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="the row of 'gamma three' has no split"):
        discover_text(tmp_path / "b.csv")
