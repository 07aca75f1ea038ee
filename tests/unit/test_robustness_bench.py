"""The corruption benchmark runner on real photos, its CE/mCE scores, and its figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from graftkit.errors import ConfigError
from graftkit.robustness.bench import cell_seed, corruption_errors, run_corruptions
from graftkit.robustness.corruptions import corrupt

CORRUPTIONS = ["shot_noise", "contrast"]  # one random, one deterministic
SEVERITIES = [1, 5]


def _histograms(images: list[Image.Image]) -> np.ndarray:
    """4x4x4 joint RGB colour histograms, normalised."""
    feats = []
    for im in images:
        q = np.asarray(im.resize((64, 64)), dtype=np.int64) // 64
        idx = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel()
        feats.append(np.bincount(idx, minlength=64) / idx.size)
    return np.array(feats)


def _load(files: list[Path]) -> list[Image.Image]:
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(im.convert("RGB"))
    return out


@pytest.fixture(scope="module")
def setup() -> tuple[LogisticRegression, list[Image.Image], np.ndarray]:
    """A colour-histogram classifier fitted on 40 real train photos, and 8 real val photos."""
    from tests.conftest import shared_dataset

    data = shared_dataset("hymenoptera_256")
    classes = ("ants", "bees")
    train_files = [sorted((data / "train" / c).glob("*.jpg"))[:20] for c in classes]
    x = _histograms(_load(train_files[0] + train_files[1]))
    y = np.repeat([0, 1], 20)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(x, y)
    val_files = [sorted((data / "val" / c).glob("*.jpg"))[:4] for c in classes]
    return clf, _load(val_files[0] + val_files[1]), np.repeat([0, 1], 4)


def _predictor(clf: LogisticRegression) -> Callable[[list[Image.Image]], np.ndarray]:
    def predict_probs(images: list[Image.Image]) -> np.ndarray:
        return clf.predict_proba(_histograms(images))

    return predict_probs


def test_results_structure_and_worker_independence(setup: tuple) -> None:
    clf, images, targets = setup
    predict = _predictor(clf)
    steps: list[int] = []
    results = {
        w: run_corruptions(predict, images, targets, CORRUPTIONS, SEVERITIES, seed=11,
                           workers=w, batch_size=3, progress=steps.append if w == 2 else None)
        for w in (0, 1, 2)
    }
    r = results[2]
    assert results[0] == results[1] == r
    # the workers taking turns with the model (every core busy with its threads): same cells
    assert run_corruptions(predict, images, targets, CORRUPTIONS, SEVERITIES, seed=11,
                           workers=2, batch_size=3, turns=True) == r
    assert sum(steps) == 8 * (1 + len(CORRUPTIONS) * len(SEVERITIES))
    json.loads(json.dumps(r))

    assert set(r) == {"clean_accuracy", "corruptions", "mca", "relative_robustness", "n",
                      "severities", "seed"}
    assert r["n"] == 8 and r["severities"] == SEVERITIES and r["seed"] == 11
    assert list(r["corruptions"]) == CORRUPTIONS
    clean = float((clf.predict(_histograms(images)) == targets).mean())
    assert r["clean_accuracy"] == pytest.approx(clean)
    cells = []
    for name in CORRUPTIONS:
        entry = r["corruptions"][name]
        assert list(entry["severity"]) == ["1", "5"]
        for acc in entry["severity"].values():
            assert 0.0 <= acc <= 1.0 and (acc * 8) == int(acc * 8)
        assert entry["mean"] == pytest.approx(np.mean(list(entry["severity"].values())))
        cells += list(entry["severity"].values())
    assert r["mca"] == pytest.approx(np.mean(cells))
    assert r["relative_robustness"] == pytest.approx(r["mca"] / r["clean_accuracy"])

    # every cell is the classifier's accuracy on corrupt(image, name, severity, cell_seed(...))
    for name in CORRUPTIONS:
        for sev in SEVERITIES:
            imgs = [corrupt(im, name, sev, cell_seed(11, i, name, sev))
                    for i, im in enumerate(images)]
            acc = float((clf.predict(_histograms(imgs)) == targets).mean())
            assert r["corruptions"][name]["severity"][str(sev)] == pytest.approx(acc)


def test_bad_requests_are_refused(setup: tuple) -> None:
    clf, images, targets = setup
    predict = _predictor(clf)
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        run_corruptions(predict, images, targets, ["rain"], [1], workers=0)
    with pytest.raises(ConfigError, match="severities"):
        run_corruptions(predict, images, targets, ["contrast"], [0, 1], workers=0)
    with pytest.raises(ValueError, match="one target per image"):
        run_corruptions(predict, images, targets[:-1], ["contrast"], [1], workers=0)
    with pytest.raises(ValueError, match=r"\(N, classes\)"):
        run_corruptions(lambda ims: np.ones(len(ims)), images, targets, ["contrast"], [1],
                        workers=0)


def _results(clean: float, cells: dict[str, dict[int, float]]) -> dict:
    sevs = sorted(next(iter(cells.values())))
    return {"clean_accuracy": clean, "severities": sevs,
            "corruptions": {n: {"severity": {str(s): a for s, a in c.items()}}
                            for n, c in cells.items()}}


def test_corruption_errors_by_hand() -> None:
    model = _results(0.9, {"fog": {1: 0.8, 2: 0.6}, "snow": {1: 0.7, 2: 0.5}})
    ref = _results(0.8, {"fog": {1: 0.6, 2: 0.4}, "snow": {1: 0.5, 2: 0.5},
                         "frost": {1: 0.1, 2: 0.1}})  # corruptions only in the reference: unused
    out = corruption_errors(model, ref)
    # CE: fog (0.2 + 0.4) / (0.4 + 0.6) = 0.6; snow (0.3 + 0.5) / (0.5 + 0.5) = 0.8
    assert out["ce"] == pytest.approx({"fog": 0.6, "snow": 0.8})
    assert out["mce"] == pytest.approx(0.7)
    # relative CE: fog (0.1 + 0.3) / (0.2 + 0.4) = 2/3; snow (0.2 + 0.4) / (0.3 + 0.3) = 1
    assert out["relative_ce"] == pytest.approx({"fog": 2 / 3, "snow": 1.0})
    assert out["relative_mce"] == pytest.approx(5 / 6)
    assert out["severities"] == [1, 2]


def test_corruption_errors_zero_reference_error_is_nan() -> None:
    model = _results(0.9, {"fog": {1: 0.8, 2: 0.6}, "snow": {1: 0.7, 2: 0.5}})
    perfect = _results(1.0, {"fog": {1: 1.0, 2: 1.0}, "snow": {1: 0.5, 2: 0.5}})
    out = corruption_errors(model, perfect)
    assert math.isnan(out["ce"]["fog"]) and math.isnan(out["relative_ce"]["fog"])
    assert out["ce"]["snow"] == pytest.approx(0.8)
    assert math.isnan(out["mce"]) and math.isnan(out["relative_mce"])
    with pytest.raises(ValueError, match="lack fog at severities 2"):
        corruption_errors(model, _results(0.8, {"fog": {1: 0.5}, "snow": {1: 0.5}}))


def test_figures(setup: tuple, tmp_path: Path) -> None:
    from graftkit.robustness.plots import (
        plot_accuracy_vs_severity,
        plot_examples,
        plot_heatmap,
    )

    _, images, _ = setup
    results = _results(0.9, {"fog": {1: 0.8, 3: 0.6, 5: 0.3}, "snow": {1: 0.7, 3: 0.5, 5: 0.2}})
    for entry in results["corruptions"].values():
        entry["mean"] = float(np.mean(list(entry["severity"].values())))
    results |= {"mca": 0.5166, "n": 8}
    paths = [plot_accuracy_vs_severity(results, tmp_path / "curves.png"),
             plot_heatmap(results, tmp_path / "heat.png"),
             plot_examples(images[0].resize((96, 72)), ["fog", "snow"], [1, 5],
                           tmp_path / "sub" / "examples.png")]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


@pytest.mark.parametrize(("cores", "threads", "plan"), [
    (2, 2, (2, True)),   # the model takes every core: as many workers as threads, in turns
    (2, 1, (1, False)),  # one core free: one worker beside the model
    (8, 2, (6, False)),
    (1, 1, (0, False)),  # nothing to share: corrupt in process
])
def test_default_plan_never_busies_more_cores_than_it_may(
        monkeypatch: pytest.MonkeyPatch, cores: int, threads: int,
        plan: tuple[int, bool]) -> None:
    import torch

    from graftkit.robustness import bench

    monkeypatch.setattr(bench.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert bench.default_plan() == plan
