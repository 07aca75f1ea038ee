"""Finding, auditing and splitting a user's data; clear errors for unusable layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftkit.data.sources import discover, discover_eval
from graftkit.errors import DataError


def _img(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _tree(root: Path, spec: dict[str, int]) -> Path:
    for cls, n in spec.items():
        for i in range(n):
            _img(root / cls / f"{i}.png", i)
    return root


def test_split_folders_layout(hymenoptera: Path) -> None:
    spec = discover(hymenoptera)
    assert spec.layout == "split-folders" and spec.classes == ["ants", "bees"]
    assert len(spec.splits["train"]) == 244 and len(spec.splits["val"]) == 153
    assert not spec.skipped


def test_class_folders_are_split_stratified_and_seeded(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 20, "b": 10, "c": 5})
    spec = discover(root, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert spec.layout == "class-folders"
    val = Counter(spec.classes[int(t)] for _, t in spec.splits["val"])
    assert val == {"a": 4, "b": 2, "c": 1}
    assert sum(len(v) for v in spec.splits.values()) == 35
    paths = [set(p for p, _ in spec.splits[s]) for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    again = discover(root, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert again.splits == spec.splits
    other = discover(root, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert other.splits["val"] != spec.splits["val"]


def test_bad_files_are_skipped_and_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 5, "b": 5})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("hello")
    (root / "stray.png").write_bytes(b"")
    spec = discover(root)
    reasons = {Path(s["path"]).name: s["reason"] for s in spec.skipped}
    assert set(reasons) == {"empty.jpg", "notes.txt", "stray.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.txt"]
    assert sum(len(v) for v in spec.splits.values()) == 10
    assert spec.report()["n_skipped"] == 3


def test_empty_class_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 3})
    (root / "b").mkdir()
    (root / "b" / "broken.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"b'.*no usable images"):
        discover(root)


def test_single_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only one class"):
        discover(_tree(tmp_path / "d", {"only": 4}))


def test_class_in_val_but_not_train_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path / "d" / "train", {"a": 2, "b": 2})
    _tree(tmp_path / "d" / "val", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError, match=r"val/c'.*not in train"):
        discover(tmp_path / "d")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def test_csv_manifest_relative_paths_and_split_column(tmp_path: Path) -> None:
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "m.csv").write_text(
        "path,label,split\nimgs/0.png,cat,train\nimgs/1.png,dog,train\n"
        "imgs/2.png,cat,val\nimgs/3.png,dog,val\nimgs/missing.png,dog,train\n"
    )
    spec = discover(tmp_path / "m.csv")
    assert spec.layout == "csv" and spec.classes == ["cat", "dog"]
    assert len(spec.splits["train"]) == 2 and len(spec.splits["val"]) == 2
    assert len(spec.skipped) == 1 and "missing" in spec.skipped[0]["path"]


def test_a_file_listed_twice_keeps_each_rows_label(tmp_path: Path) -> None:
    """The same file as cat and as dog is a label conflict the audit can see, not two dogs."""
    for i in range(8):
        _img(tmp_path / "imgs" / f"{i}.png", i * 30)
    rows = ["path,label,split",
            *(f"imgs/{i}.png,{'cat' if i < 3 else 'dog'},train" for i in range(6)),
            "imgs/0.png,dog,train", "imgs/6.png,cat,val", "imgs/7.png,dog,val"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    spec = discover(tmp_path / "m.csv")
    zero = sorted(t for p, t in spec.splits["train"] if p.endswith("0.png"))
    assert zero == [0, 1]  # cat and dog, one row each
    assert Counter(t for _, t in spec.splits["train"]) == {0: 3, 1: 4}


def test_csv_missing_column_names_it(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"no image path column 'path' and no text column "
                       r"\(columns: file, label\).*--text-column"):
        discover(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("path,class\na.png,x\n")
    with pytest.raises(DataError, match="no column 'label' .*data.label_column"):
        discover(tmp_path / "n.csv")


def test_regression_csv(tmp_path: Path) -> None:
    rows = ["path,label"]
    for i in range(20):
        _img(tmp_path / f"{i}.png", i)
        rows.append(f"{i}.png,{i * 0.5}")
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    spec = discover(tmp_path / "r.csv", task="regression", val_fraction=0.25)
    assert spec.task == "regression" and spec.classes == []
    assert len(spec.splits["val"]) == 5 and len(spec.splits["train"]) == 15
    ys = [t for _, t in spec.splits["train"]]
    assert spec.target_stats["mean"] == pytest.approx(np.mean(ys))
    (tmp_path / "bad.csv").write_text("path,label\n0.png,abc\n1.png,2\n")
    with pytest.raises(DataError, match="not a finite number"):
        discover(tmp_path / "bad.csv", task="regression")
    (tmp_path / "nan.csv").write_text("path,label\n0.png,nan\n1.png,2\n")
    with pytest.raises(DataError, match="'nan'.*not a finite number"):
        discover(tmp_path / "nan.csv", task="regression")


def test_discover_eval_uses_run_labels(hymenoptera: Path, tmp_path: Path) -> None:
    items, skipped, used = discover_eval(hymenoptera, ["ants", "bees"])
    assert used == "val" and len(items) == 153 and not skipped
    items, _, used = discover_eval(hymenoptera / "val", ["ants", "bees"])
    assert used == "all" and len(items) == 153
    with pytest.raises(DataError, match="not a class of this run"):
        discover_eval(hymenoptera / "val", ["ants", "wasps"])


def test_evaluation_reads_data_as_training_does(tmp_path: Path) -> None:
    """A class named "train" beside others is a class, for evaluation as for training; a
    "Split" column is the split column; a row without a label is skipped, not fatal."""
    for c in ("bus", "train"):
        for i in range(3):
            _img(tmp_path / "veh" / c / f"{i}.png", 60 * i + (c == "bus"))
    assert discover(tmp_path / "veh").classes == ["bus", "train"]
    items, _, used = discover_eval(tmp_path / "veh", ["bus", "train"])
    assert used == "all" and len(items) == 6
    rows = ["path,label,Split", *(f"veh/{c}/{i}.png,{c},{'val' if i == 2 else 'train'}"
                                  for c in ("bus", "train") for i in range(3))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    spec = discover(tmp_path / "m.csv")
    assert len(spec.splits["val"]) == 2 and len(spec.splits["train"]) == 4  # not re-split
    (tmp_path / "gap.csv").write_text("\n".join([*rows, "veh/bus/0.png,,val"]) + "\n")
    items, skipped, _ = discover_eval(tmp_path / "gap.csv", ["bus", "train"], split="val")
    assert len(items) == 2 and skipped == [{"path": f"{tmp_path / 'gap.csv'}:8",
                                            "reason": "empty path or label"}]


def test_partial_split_column_is_an_error(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / f"{i}.png", i)
    (tmp_path / "m.csv").write_text("path,label,split\n0.png,a,train\n1.png,b,train\n2.png,c,\n")
    with pytest.raises(DataError, match="m.csv:4: the split column is empty"):
        discover(tmp_path / "m.csv")


def test_train_and_test_folders_without_val_carve_val_from_train(tmp_path: Path) -> None:
    _tree(tmp_path / "d" / "train", {"a": 10, "b": 10})
    _tree(tmp_path / "d" / "test", {"a": 2, "b": 2})
    spec = discover(tmp_path / "d", val_fraction=0.2)
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 16, "val": 4, "test": 4}


def test_hidden_folders_are_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 3, "b": 3})
    _img(root / "a" / ".ipynb_checkpoints" / "copy.png")
    spec = discover(root)
    assert not any(".ipynb_checkpoints" in p for items in spec.splits.values() for p, _ in items)


@pytest.mark.parametrize("names", [("val", "valid"), ("train", "Train")])
def test_folders_of_one_split_or_name_are_refused_naming_both(tmp_path: Path,
                                                             names: tuple[str, str]) -> None:
    root = tmp_path / "d"
    _tree(root / "train", {"a": 3, "b": 3})
    for name in names:
        _tree(root / name, {"a": 2, "b": 2})
    with pytest.raises(DataError, match=f"both .*{names[0]}.* and .*{names[1]}|both .*"
                                        f"{names[1]}.* and .*{names[0]}"):
        discover(root)
    with pytest.raises(DataError, match="both"):
        discover_eval(root, ["a", "b"])


def test_nul_byte_in_a_manifest_path_is_skipped_with_a_reason(tmp_path: Path) -> None:
    _tree(tmp_path / "img", {"a": 4, "b": 4})
    rows = [f"img/{c}/{i}.png,{c}" for c in "ab" for i in range(4)] + ["img/a/x\0y.png,a"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    spec = discover(tmp_path / "m.csv")
    assert [s["reason"] for s in spec.skipped] == ["cannot read: embedded null byte"]
    assert sum(len(v) for v in spec.splits.values()) == 8


@pytest.mark.parametrize("threads", [1, 2])
def test_the_audit_decodes_on_the_thread_setting(threads: int, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding every file takes as many threads as the model would, never more."""
    import torch

    from graftkit.data import sources

    seen: list[int] = []
    real = sources.ThreadPoolExecutor

    def recording(max_workers: int):
        seen.append(max_workers)
        return real(max_workers=max_workers)

    monkeypatch.setattr(sources, "ThreadPoolExecutor", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        spec = discover(_tree(tmp_path, {"a": 3, "b": 3}), val_fraction=0.34)
    finally:
        torch.set_num_threads(before)
    assert seen == [threads] and sum(len(v) for v in spec.splits.values()) == 6
