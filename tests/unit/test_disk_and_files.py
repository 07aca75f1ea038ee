"""Faults of the disk and odd files: a full or unwritable cache disk, a full run disk, CSV fields
over csv's limit. (A real full disk during training: tests/integration/test_resume_demo_api.py.)"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from graftkit import run as rd
from graftkit.data.spec import MAX_FIELD
from graftkit.data.text import read_text_csv
from graftkit.train import features


def test_an_unwritable_cache_disk_only_turns_the_disk_cache_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a_file").write_text("the cache folder cannot be made below a file")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "a_file"))
    monkeypatch.setattr(features, "_DISK_OFF", None)
    monkeypatch.setattr(features, "_MEMORY", {})
    calls, warnings = [], []

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.ones(3, 2), torch.arange(3)

    (x, y), origin = features.cached_extract("k1", "disk", compute, warnings.append)
    assert origin == "computed" and x.shape == (3, 2) and y.tolist() == [0, 1, 2]
    assert len(warnings) == 1 and "disk cache is off" in warnings[0]
    assert features.cached_extract("k1", "disk", compute, warnings.append)[1] == "memory"
    features.cached_extract("k2", "disk", compute, warnings.append)  # not tried again
    assert len(calls) == 2 and len(warnings) == 1


def test_write_json_on_a_full_disk_rewrites_in_place(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    meta = tmp_path / "meta.json"
    rd.write_json(meta, {"status": "running", "pad": "x" * 500})

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rd.os, "replace", full)
    rd.write_json(meta, {"status": "failed", "failure": "No space left on device"})
    assert json.loads(meta.read_text()) == {"status": "failed",
                                           "failure": "No space left on device"}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary file left
    with pytest.raises(OSError):  # a new file cannot be written in place
        rd.write_json(tmp_path / "new.json", {})
    monkeypatch.setattr(rd.os, "replace", lambda *_: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):  # other errors are not papered over
        rd.write_json(meta, {})


def test_a_field_over_the_csv_limit_skips_its_row_not_the_file(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("text,label\nshort one,a\n" + "w" * (MAX_FIELD + 1) + ",b\nanother,b\n")
    rows, skipped = read_text_csv(p)
    assert rows == [("short one", "a"), ("another", "b")]
    assert skipped == [{"path": f"{p}:3", "row": 3,
                        "reason": f"a field over {MAX_FIELD} characters"}]
    import csv

    assert csv.field_size_limit() == 131_072  # the process-wide limit is restored


def test_texts_are_extracted_shortest_first_and_come_back_in_their_order() -> None:
    """A batch pads to its longest text: extraction reads a text dataset shortest first, and
    puts the rows back in the dataset's order."""
    import torch

    from graftkit.data.text import TextDataset
    from graftkit.train.features import extract

    texts = ["a b c d e f g", "a", "a b c", "a b", "a b c d e f g h i j", "a b c d"]
    ds = TextDataset([(t, i) for i, t in enumerate(texts)])
    assert [len(texts[i]) for i in ds.extraction_order()] == sorted(map(len, texts))
    widths: list[int] = []

    def collate(batch):  # noqa: ANN001, ANN202 - (texts, targets) -> (padded lengths, targets)
        n = max(len(t) for t, _ in batch)
        widths.append(n)
        return torch.tensor([[len(t), n] for t, _ in batch], dtype=torch.float32), \
            torch.tensor([y for _, y in batch])

    x, y = extract(lambda b: b[:, :1], ds, 2, torch.device("cpu"), collate=collate)
    assert y.tolist() == list(range(6)) and x[:, 0].tolist() == [len(t) for t in texts]
    padded = sum(widths) * 2
    widths.clear()
    x2, _ = extract(lambda b: b[:, :1], ds, 2, torch.device("cpu"), collate=collate, sort=False)
    assert torch.equal(x, x2) and padded < sum(widths) * 2  # the same rows, less padding
