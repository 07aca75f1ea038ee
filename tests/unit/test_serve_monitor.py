"""Drift monitoring: PSI numbers, the training reference built from validation predictions, and
the live monitor moving when traffic shifts (one class only, darker images, lower confidence)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from graftkit.evaluate.reference import build_reference, read_reference, write_reference
from graftkit.modalities import get
from graftkit.modalities.image import image_stats
from graftkit.modalities.text import text_stats
from graftkit.serve.monitor import Monitor, psi

IMAGE, TEXT = get("image"), get("text")

CLASSES = ["ants", "bees", "wasps"]


def test_psi_by_hand() -> None:
    assert psi([1, 1, 2], [10, 10, 20]) == 0.0  # scale does not matter
    want = (0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5)
    assert psi([0.7, 0.3], [0.5, 0.5]) == pytest.approx(want)
    floored = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi([5, 0], [1, 1]) == pytest.approx(floored, rel=1e-3)  # an empty bin is floored
    assert psi([5, 0], [1, 1]) > 0.25
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([0, 0], [1, 1])


def _reference(tmp_path) -> dict:  # noqa: ANN001
    rng = np.random.default_rng(0)
    n = 300
    targets = np.arange(n) % 3
    pred = targets.copy()
    pred[:30] = (pred[:30] + 1) % 3  # 90% right
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), pred] = 0.9
    images = []
    for i in range(12):  # noisy photos, from dark to light (mean 128), of two sizes
        p = tmp_path / f"{i}.png"
        shade = 73 + 10 * i
        Image.fromarray(rng.integers(shade - 20, shade + 21, (40 + 20 * (i % 2), 50, 3),
                                     np.uint8)).save(p)
        images.append(str(p))
    return build_reference("classification", "image", CLASSES, IMAGE.input_reference(images),
                           targets, probs, pred)


def test_reference_summarises_validation_predictions(tmp_path) -> None:  # noqa: ANN001
    ref = _reference(tmp_path)
    assert ref["n"] == 300 and ref["split"] == "val" and ref["classes"] == CLASSES
    assert sum(ref["predicted"].values()) == pytest.approx(1)
    assert ref["labels"] == {c: pytest.approx(1 / 3) for c in CLASSES}
    assert ref["confidence"]["mean"] == pytest.approx(0.9)
    assert ref["confidence"]["hist"][9] == 1.0  # the bin [0.9, 1.0]
    assert sum(ref["confidence"]["hist"]) == 1.0
    ins = ref["inputs"]
    assert ins["n"] == 12 and ins["width"] == {"mean": 50.0, "std": 0.0}
    assert ins["height"]["mean"] == 50.0 and ins["height"]["std"] == 10.0
    assert 0.45 < ins["brightness"]["mean"] < 0.55
    write_reference(tmp_path, ref)
    assert read_reference(tmp_path) == ref
    (tmp_path / "reference.json").write_text("{not json")
    assert read_reference(tmp_path) is None  # a damaged file: computed again, never a crash


def test_text_and_regression_references() -> None:
    texts = ["a b c", "hello there", "x"]
    ref = build_reference("classification", "text", ["p", "n"], TEXT.input_reference(texts),
                          np.array([0, 1, 0]),
                          np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 0]))
    assert ref["inputs"]["words"]["mean"] == pytest.approx(2)
    assert ref["inputs"]["chars"]["mean"] == pytest.approx(17 / 3)
    assert text_stats("two words") == {"chars": 9.0, "words": 2.0}
    reg = build_reference("regression", "text", [], TEXT.input_reference(texts),
                          np.array([1.0, 2.0, 3.0]),
                          pred=np.array([1.0, 2.0, 3.0]))
    assert reg["value"]["mean"] == 2.0 and "predicted" not in reg


def _feed(monitor: Monitor, labels: list[str], prob: float, shade: int) -> None:
    stats = image_stats(Image.new("RGB", (50, 50), (shade, shade, shade)))
    for label in labels:
        monitor.record({"label": label, "prob": prob, "top": []}, stats)


def test_monitor_moves_when_only_one_class_is_served(tmp_path) -> None:  # noqa: ANN001
    ref = _reference(tmp_path)
    like_val = Monitor(CLASSES, "classification", IMAGE.stat_keys, ref)
    _feed(like_val, CLASSES * 20, 0.9, 128)
    r = like_val.report()
    assert r["n"] == 60 and r["status"] == "stable"
    assert r["classes"]["psi"] < 0.01 and abs(r["confidence"]["shift"]) < 1e-9
    assert abs(r["inputs"]["brightness"]["shift_std"]) < 0.1

    one_class = Monitor(CLASSES, "classification", IMAGE.stat_keys, ref)
    _feed(one_class, ["bees"] * 60, 0.55, 20)  # only bees, unsure, dark images
    r = one_class.report()
    assert r["classes"]["live"] == {"ants": 0.0, "bees": 1.0, "wasps": 0.0}
    assert r["classes"]["psi"] > 2 and r["classes"]["level"] == "large" and r["status"] == "large"
    assert r["confidence"]["shift"] == pytest.approx(0.55 - 0.9)
    assert r["confidence"]["psi"] > 0.25
    assert r["inputs"]["brightness"]["shift_std"] < -3
    assert r["inputs"]["width"]["shift_std"] == 0.0  # the reference's widths are all 50


def test_monitor_needs_data_and_a_reference(tmp_path) -> None:  # noqa: ANN001
    m = Monitor(CLASSES, "classification", IMAGE.stat_keys, _reference(tmp_path), window=50)
    _feed(m, ["ants"] * 10, 0.9, 128)
    assert m.report()["status"] == "insufficient_data"
    _feed(m, ["bees"] * 100, 0.9, 128)  # the window keeps the last 50
    r = m.report()
    assert r["n"] == 50 and r["total"] == 110 and r["classes"]["live"]["bees"] == 1.0
    bare = Monitor(CLASSES, "classification", IMAGE.stat_keys)
    bare.set_reference(None, "no validation data here")
    _feed(bare, ["ants"] * 40, 0.9, 128)
    r = bare.report()
    assert r["status"] == "no_reference" and r["reference_error"] == "no validation data here"
    assert r["classes"]["psi"] is None and r["classes"]["live"]["ants"] == 1.0
