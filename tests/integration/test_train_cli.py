"""The real CLI on real data: train, predict, evaluate, and the accuracy targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import TINY, graft, read_history

pytestmark = pytest.mark.integration


def test_linear_probe_run_directory_and_accuracy(probe_run: Path) -> None:
    for name in ("config.yaml", "meta.json", "model.safetensors", "metrics.json",
                 "history.jsonl", "data_report.json", "checkpoints/last.safetensors"):
        assert (probe_run / name).is_file(), name
    meta = json.loads((probe_run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["classes"] == ["ants", "bees"]
    assert meta["model"]["name"] == "efficientnet_lite0"
    assert meta["preprocessing"]["input_size"] == 224
    assert meta["versions"]["torch"] and len(meta["data"]["fingerprint"]) == 16
    metrics = json.loads((probe_run / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.92, metrics["val"]["accuracy"]  # issue target
    assert set(metrics["val"]["per_class"]) == {"ants", "bees"}
    cm = metrics["val"]["confusion_matrix"]
    assert sum(map(sum, cm)) == 153
    hist = read_history(probe_run)
    assert len(hist) == 30 and all(h["trainable_params"] == 1280 * 2 + 2 for h in hist)
    report = json.loads((probe_run / "data_report.json").read_text())
    assert report["counts"]["train"] == {"ants": 123, "bees": 121}


def test_predict_json_and_text(probe_run: Path, hymenoptera: Path) -> None:
    bees = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]
    out = json.loads(graft("predict", probe_run, *bees, "--json").stdout)
    assert len(out) == 3
    for r in out:
        assert r["label"] in ("ants", "bees")
        assert sum(t["prob"] for t in r["top"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(r["label"] == "bees" for r in out) >= 2
    text = graft("predict", probe_run, bees[0], "-k", "1").stdout
    assert str(bees[0]) in text and ("bees" in text or "ants" in text)


def test_evaluate_matches_training_metrics(probe_run: Path, hymenoptera: Path) -> None:
    graft("evaluate", probe_run, "--data", hymenoptera / "val", "--name", "valcheck")
    ev = json.loads((probe_run / "eval" / "valcheck" / "metrics.json").read_text())
    val = json.loads((probe_run / "metrics.json").read_text())["val"]
    assert ev["n"] == 153
    assert ev["accuracy"] == pytest.approx(val["accuracy"])
    assert ev["confusion_matrix"] == val["confusion_matrix"]
    # the run's own val split, with two test-time views: the plain model's numbers come from
    # the same pass and are the training metrics; the report shows both
    own = json.loads(graft("evaluate", probe_run, "--split", "val", "--json", "--tta", "2"
                           ).stdout)
    tta = own["tta"]
    assert tta["views"] == 2 and tta["names"] == ["identity", "flip"]
    assert tta["without"]["accuracy"] == pytest.approx(val["accuracy"])
    assert tta["without"]["ece"] == pytest.approx(val["ece"], abs=1e-4)
    assert own["accuracy"] == tta["with"]["accuracy"] and own["n"] == 153
    assert tta["with"]["accuracy"] == pytest.approx(
        tta["without"]["accuracy"] + (tta["fixed"] - tta["broken"]) / 153)
    assert tta["model_seconds_with"] > tta["model_seconds_without"] > 0
    page = (Path(own["report"])).read_text()
    assert "Test-time augmentation" in page and 'data-key="tta.with.accuracy"' in page


def test_second_probe_hits_the_feature_cache(probe_run: Path, hymenoptera: Path,
                                             tmp_path: Path) -> None:
    proc = graft("train", "--data", hymenoptera, "--out", tmp_path / "again", "--epochs", "30")
    assert "from the disk cache" in proc.stderr
    a = json.loads((probe_run / "metrics.json").read_text())["val"]
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())["val"]
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"])


def test_caltech_linear_probe(caltech: Path, tmp_path: Path) -> None:
    graft("train", "--data", caltech, "--strategy", "linear_probe", "--out", tmp_path / "c")
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["val"]["accuracy"] >= 0.95, m["val"]["accuracy"]  # issue target
    assert "top5_accuracy" in m["val"] and len(m["val"]["per_class"]) == 10


@pytest.mark.parametrize("strategy", ["last_n", "full", "gradual", "lp_ft"])
def test_every_strategy_trains_end_to_end(strategy: str, small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / strategy
    graft("train", "--data", small_csv, "--strategy", strategy, "--out", out, "--epochs", "2",
          *TINY, "strategy.probe_epochs=2", "train.mixup=0.2", "train.cutmix=1.0",
          "strategy.layer_decay=0.8")
    hist = read_history(out)
    assert len(hist) == (4 if strategy == "lp_ft" else 2)
    assert all(h["train_loss"] > 0 for h in hist)
    if strategy == "gradual":
        assert [h["unfrozen_blocks"] for h in hist] == [0, 1]
        assert hist[0]["trainable_params"] < hist[1]["trainable_params"]
    if strategy == "lp_ft":
        assert [h["stage"] for h in hist] == ["probe", "probe", "finetune", "finetune"]
        assert hist[0]["trainable_params"] < hist[2]["trainable_params"]
        # the result is the fine-tuned model: the checkpoint is chosen in the last stage
        assert json.loads((out / "metrics.json").read_text())["best_epoch"] in (3, 4)


def test_augmented_probe_says_it_recomputes(small_csv: Path, tmp_path: Path) -> None:
    proc = graft("train", "--data", small_csv, "--out", tmp_path / "aug", "--epochs", "1",
                 "--augment", "standard", *TINY)
    assert "recomputed every epoch" in proc.stderr


def test_verbose_says_where_the_time_went(small_csv: Path, tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    # its own feature cache: features read from a cache (another test's) read no image
    proc = graft("train", "--data", small_csv, "--out", tmp_path / "run", "--epochs", "2", "-v",
                 *TINY, env_extra={"GRAFT_CACHE_DIR": str(tmp_path / "cache")})
    wall = time.perf_counter() - t0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    timings = meta["timings"]
    # every image was decoded once: by the data check, then taken by the feature extraction
    assert meta["decoded_once"]["kept"] == meta["decoded_once"]["taken"] > 0
    assert meta["decoded_once"]["past_bound"] == 0
    for phase in ("startup", "setup", "data", "model load", "features", "training", "final scoring",
                  "calibration", "drift reference", "report", "gallery"):
        assert timings[phase] >= 0.0, phase
    assert list(timings)[:2] == ["startup", "setup"] and timings["startup"] > 0.1  # torch...
    assert sum(timings.values()) <= wall
    table = proc.stderr.split("where the time went (s):", 1)[1]
    assert "training" in table and "other" in table and "total" in table


def test_regression_from_csv(hymenoptera: Path, tmp_path: Path) -> None:
    rows = ["path,label"]
    files = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:20]
    rows += [f"{f},{i / 4}" for i, f in enumerate(files)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "reg"
    graft("train", "--data", tmp_path / "r.csv", "--task", "regression", "--strategy", "full",
          "--epochs", "2", "--out", out, *TINY, "loss.name=huber")
    m = json.loads((out / "metrics.json").read_text())
    assert {"mae", "rmse", "r2"} <= set(m["val"]) and m["monitor"] == "rmse"
    ev = out / "eval" / f"{tmp_path.name}-r-val"
    assert {"regression.png", "training_curves.png", "report.html"} <= {
        p.name for p in ev.iterdir()}
    assert "calibration" not in json.loads((out / "meta.json").read_text())
    pred = json.loads(graft("predict", out, files[0], "--json").stdout)
    assert isinstance(pred[0]["value"], float)


def test_early_stop_ends_the_probe_stage_not_the_run(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "es"
    graft("train", "--data", small_csv, "--strategy", "lp_ft", "--out", out, "--epochs", "2",
          *TINY, "strategy.probe_epochs=20", "train.early_stop.patience=1",
          "train.early_stop.metric=loss", "strategy.probe_lr=0.5")
    stages = [h["stage"] for h in read_history(out)]
    assert stages.count("probe") < 20 and stages[-1] == "finetune"
