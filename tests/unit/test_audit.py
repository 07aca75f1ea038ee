"""The data audit's analysis (graftkit.audit.findings) on small arrays with known answers, and the
modalities' audit keys on real files and texts."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from graftkit.audit import findings as F
from graftkit.modalities import get
from tests.conftest import shared_dataset


def E(item: str, split: str, label: str, target: int = 0) -> F.Entry:
    return F.Entry(item, split, label, target)


def test_exact_groups_are_duplicates_leaks_and_label_conflicts() -> None:
    entries = [E("a", "train", "cat"), E("a2", "train", "cat"),  # a duplicate in train
               E("b", "train", "dog"), E("b-val", "val", "dog"),  # a leak
               E("c", "train", "cat"), E("c-val", "val", "dog"),  # a leak with another label
               E("d", "val", "dog")]
    content = ["A", "A", "B", "B", "C", "C", "D"]
    found = F.exact(entries, content)
    kinds = sorted(f.kind for f in found)
    assert kinds == ["exact_duplicate", "label_conflict", "leak", "leak"]
    conflict = next(f for f in found if f.kind == "label_conflict")
    assert conflict.items == ["c", "c-val"] and conflict.labels == ["cat", "dog"]
    assert all("--drop-leaks" in f.action for f in found if f.kind == "leak")


def test_neighbours_match_a_brute_force_search() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    idx, sim = F.neighbours(x, k=3, block=64)  # several blocks
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    np.fill_diagonal(full, -2)
    want = np.argsort(-full, axis=1)[:, :3]
    assert (idx == want).all()
    assert np.allclose(sim, np.take_along_axis(full, want, 1), atol=1e-5)


def test_near_pairs_by_key_or_by_features_but_not_exact_copies() -> None:
    entries = [E(str(i), "train" if i < 3 else "val", "x") for i in range(5)]
    x = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0, 0.7, 0.7], [1, 0, 0]], np.float32)
    idx, sim = F.neighbours(x, k=2)
    content = ["A", "B", "C", "D", "A"]  # 0 and 4 are exact copies: not a near pair
    keys = [None, None, "k", "k", None]  # 2 and 3 share a near key, at cosine 0.7
    pairs = {(tuple(f.items), f.kind) for f in F.near(entries, content, idx, sim, keys,
                                                      lambda a, b: a is not None and a == b)}
    assert pairs == {(("0", "1"), "near_duplicate"), (("1", "4"), "near_leak"),
                     (("2", "3"), "near_leak")}


def test_drop_keeps_train_copies_and_one_per_split() -> None:
    spec = SimpleNamespace(splits={"train": [("a", 0.0), ("a2", 0.0), ("b", 1.0)],
                                   "val": [("b-val", 1.0), ("v", 0.0)],
                                   "test": [("v-test", 0.0)]}, task="classification",
                           classes=["cat", "dog"])
    content = {"a": "A", "a2": "A", "b": "B", "b-val": "B", "v": "V", "v-test": "V"}
    audit = F.quick(spec, content.__getitem__)
    dropped = F.drop(spec, audit, duplicates=True, leaks=True)
    assert spec.splits == {"train": [("a", 0.0), ("b", 1.0)], "val": [("v", 0.0)], "test": []}
    reasons = {d["path"]: d["reason"] for d in dropped}
    assert reasons["a2"].startswith("dropped (--drop-duplicates): a copy of a")
    assert reasons["b-val"].startswith("dropped (--drop-leaks): a copy of b in train")
    assert reasons["v-test"].startswith("dropped (--drop-leaks): a copy of v in val")


def test_a_file_listed_twice_keeps_one_row() -> None:
    spec = SimpleNamespace(splits={"train": [("a", 0.0), ("b", 1.0), ("a", 0.0)],
                                   "val": [("v", 0.0)]}, task="classification",
                           classes=["cat", "dog"])
    audit = F.quick(spec, {"a": "A", "b": "B", "v": "V"}.__getitem__)
    dropped = F.drop(spec, audit, duplicates=True, leaks=True)
    assert spec.splits["train"] == [("a", 0.0), ("b", 1.0)] and len(dropped) == 1


def test_balance_flags_imbalance_and_classes_too_small_to_measure() -> None:
    table = {"train": {"cat": 90, "dog": 10}, "val": {"cat": 40, "dog": 4}}
    found = {f.kind: f for f in F.balance(table, ["cat", "dog"])}
    assert found["imbalance"].score == 9.0 and "class_weights=auto" in found["imbalance"].action
    assert found["few_val"].labels == ["dog"] and "25 points" in found["few_val"].detail
    assert "few_train" not in found
    odd = F.balance({"train": {"cat": 90, "dog": 10, 'thanks"': 1}}, ["cat", "dog", 'thanks"'])
    few = [f for f in odd if f.kind == "few_train"]  # a row broken by a stray quote, say
    assert [f.labels for f in few] == [['thanks"']] and few[0].detail == "1 training example"


def test_label_issues_find_flipped_labels_among_the_top() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    y = np.repeat([0, 1, 2], 40)
    x = centres[y] + rng.normal(size=(120, 8))
    flipped = [3, 50, 90, 100]
    given = y.copy()
    given[flipped] = (y[flipped] + 1) % 3
    entries = [E(str(i), "train", "abc"[t], int(t)) for i, t in enumerate(given)]
    issues, note = F.label_issues(entries, x, ["a", "b", "c"])
    top = [int(f.items[0]) for f in issues[:6]]
    assert set(flipped) <= set(top), (top, note)
    assert issues[0].suggested == "abc"[y[int(issues[0].items[0])]]
    assert "5-fold probe" in note


def test_outliers_and_odd_statistics() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)) * 0.5 + 1
    x[7] = -np.ones(8)  # far from everything
    entries = [E(str(i), "train", "x") for i in range(60)]
    _, sim = F.neighbours(x)
    flagged = [f.items[0] for f in F.outliers(entries, sim)]
    assert flagged[0] == "7" and len(flagged) <= 2, flagged
    stats = [{"width": 200.0 + i} for i in range(60)]
    stats[11] = {"width": 8.0}
    odd, summary = F.odd_stats(entries, stats)
    assert [f.items[0] for f in odd] == ["11"] and summary["width"]["min"] == 8.0


def test_image_keys_see_a_reencoded_resized_copy_as_near(tmp_path: Path) -> None:
    pytest.importorskip("imagehash")
    image = get("image")
    photos = sorted((shared_dataset("hymenoptera_256") / "train" / "ants").glob("*.jpg"))[:2]
    copy = tmp_path / "copy.jpg"
    with Image.open(photos[0]) as im:
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(copy, quality=55)
    assert image.content_key(str(photos[0])) != image.content_key(str(copy))
    a, b, other = (image.near_key(str(p)) for p in (photos[0], copy, photos[1]))
    assert image.near_match(a, b) and not image.near_match(a, other)
    stats = image.item_stats(str(copy))
    assert stats["width"] > 0 and stats["aspect"] == pytest.approx(stats["width"]
                                                                  / stats["height"])
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    (tmp_path / "same.png").write_bytes(buf.getvalue())
    (tmp_path / "same2.png").write_bytes(buf.getvalue())
    assert image.content_key(str(tmp_path / "same.png")) == image.content_key(
        str(tmp_path / "same2.png"))


def test_text_keys_fold_case_accents_punctuation_and_spacing() -> None:
    text = get("text")
    assert text.near_key("Free  ENTRY!! Café") == text.near_key("free entry cafe")
    assert text.content_key("Free entry") != text.content_key("free entry")
    assert text.near_key("!!!") is None and text.item_stats("two words")["words"] == 2
