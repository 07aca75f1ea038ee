"""The evaluation report of a real run: files, numbers (against scikit-learn), calibration,
decision thresholds, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm

from .conftest import TINY, graft

pytestmark = pytest.mark.integration

FIGURES = {"training_curves.png", "reliability.png", "confusion_matrix.png",
           "confusion_matrix_normalized.png", "roc_pr.png", "per_class_f1.png",
           "confidence_histogram.png"}


def _val_logits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's raw outputs on its validation folder, computed here without graft's eval code."""
    from graftkit import Run
    from graftkit.data.images import load_image
    from graftkit.data.transforms import eval_transform

    run = Run(run_dir)
    data = Path(run.config.data.path) / "val"
    files = sorted((p, i) for i, c in enumerate(run.classes) for p in (data / c).glob("*.jpg"))
    tf = eval_transform(run.model.data_config)
    with torch.no_grad():
        x = torch.stack([tf(load_image(p)) for p, _ in files])
        logits = torch.cat([run.model(b) for b in x.split(32)])
    return logits, torch.tensor([i for _, i in files])


def test_training_writes_the_report(probe_run: Path) -> None:
    ev = probe_run / "eval" / "hymenoptera_256-val"
    assert FIGURES | {"metrics.json", "report.html"} <= {p.name for p in ev.iterdir()}
    for f in FIGURES:
        assert (ev / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (ev / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    assert page.count('class="ex"') == 12  # the top-losses gallery, with thumbnails
    assert page.count('alt="Grad-CAM of') == 12  # and what the model looked at in each
    assert page.count("data:image/png;base64,") == len(FIGURES) + 12
    m = json.loads((ev / "metrics.json").read_text())
    # the same numbers as the run's metrics.json (one analysis, two places)
    assert m["accuracy"] == json.loads((probe_run / "metrics.json").read_text())["val"]["accuracy"]


def test_metrics_equal_sklearn_on_a_real_run(probe_run: Path) -> None:
    ev = json.loads(graft("evaluate", probe_run, "--split", "val", "--json").stdout)
    logits, y = _val_logits(probe_run)
    t = json.loads((probe_run / "meta.json").read_text())["calibration"]["temperature"]
    probs = (logits.double() / t).softmax(-1).numpy()
    y = y.numpy()
    pred = probs.argmax(1)
    assert ev["n"] == len(y) == 153
    assert ev["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert ev["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert ev["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert ev["weighted_recall"] == pytest.approx(skm.recall_score(y, pred, average="weighted"))
    assert ev["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-4)
    assert ev["average_precision"] == pytest.approx(
        skm.average_precision_score(y, probs[:, 1]), abs=1e-4)
    assert ev["log_loss"] == pytest.approx(skm.log_loss(y, probs), abs=1e-4)
    assert ev["brier"] == pytest.approx(skm.brier_score_loss(y, probs[:, 1]), abs=1e-4)
    assert ev["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert ev["per_class"]["bees"]["support"] == int((y == 1).sum())


def test_temperature_fitted_on_val_lowers_ece_without_changing_accuracy(probe_run: Path) -> None:
    m = json.loads((probe_run / "metrics.json").read_text())["val"]
    meta = json.loads((probe_run / "meta.json").read_text())
    assert meta["calibration"]["fitted_on"] == "val"
    assert meta["calibration"]["temperature"] != 1.0
    assert m["ece"] <= m["uncalibrated"]["ece"]
    assert m["log_loss"] <= m["uncalibrated"]["log_loss"]
    logits, y = _val_logits(probe_run)
    assert m["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_caltech_report_has_every_section(caltech: Path, tmp_path: Path) -> None:
    """The issue's second dataset, 10 classes (the TINY model keeps it fast; the accuracy
    target lives in test_train_cli)."""
    out = tmp_path / "c"
    graft("train", "--data", caltech, "--out", out, "--epochs", "3", *TINY)
    ev = out / "eval" / "caltech101_10_160-val"
    assert FIGURES <= {p.name for p in ev.iterdir()}
    page = (ev / "report.html").read_text()
    for section in ("summary", "metrics", "calibration", "training", "confusion", "curves",
                    "classes", "errors"):
        assert f'id="{section}"' in page
    m = json.loads((out / "metrics.json").read_text())
    assert m["val"]["ece"] <= m["val"]["uncalibrated"]["ece"]
    assert len(m["val"]["per_class"]) == 10 and "top5_accuracy" in m["val"]


def test_threshold_for_recall_is_stored_and_used_by_predict(small_csv: Path, tmp_path: Path,
                                                            hymenoptera: Path) -> None:
    out = tmp_path / "thr"
    graft("train", "--data", small_csv, "--out", out, "--epochs", "2", *TINY,
          "calibration.threshold=recall", "calibration.target=0.99", "report.enabled=false")
    meta = json.loads((out / "meta.json").read_text())
    cal = meta["calibration"]
    assert cal["criterion"] == "recall" and cal["positive_class"] == "bees"
    assert not (out / "eval").exists()
    m = json.loads((out / "metrics.json").read_text())["val"]
    assert m["per_class"]["bees"]["recall"] >= 0.99  # on the split it was chosen on
    files = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:6]
    for r in json.loads(graft("predict", out, *files, "--json").stdout):
        p_bees = next(t["prob"] for t in r["top"] if t["label"] == "bees")
        assert r["label"] == ("bees" if p_bees >= cal["threshold"] else "ants")
    # refit post hoc for F1, and back to no threshold
    proc = graft("calibrate", out, "--threshold", "f1")
    assert "threshold P(bees)" in proc.stdout
    assert json.loads((out / "meta.json").read_text())["calibration"]["criterion"] == "f1"
    graft("calibrate", out, "--threshold", "none")
    assert json.loads((out / "meta.json").read_text())["calibration"]["threshold"] is None


def test_threshold_errors(caltech: Path, small_csv: Path, tmp_path: Path) -> None:
    proc = graft("train", "--data", caltech, "--out", tmp_path / "x", *TINY,
                 "calibration.threshold=f1", check=False)
    assert proc.returncode == 2 and "binary classification" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = graft("train", "--data", small_csv, "--out", tmp_path / "y", *TINY,
                 "calibration.threshold=precision", check=False)
    assert proc.returncode == 2 and "calibration.target" in proc.stderr


def test_compare_runs(probe_run: Path, small_csv: Path, tmp_path: Path) -> None:
    other = tmp_path / "tiny"
    graft("train", "--data", small_csv, "--out", other, "--epochs", "1", *TINY,
          "report.enabled=false")
    md = tmp_path / "cmp.md"
    proc = graft("compare", probe_run, other, "--split", "val", "--out", md, "--sort", "accuracy")
    table = md.read_text().splitlines()
    assert table[0].startswith("| run | model | strategy | trained params | train time")
    assert "ECE" in table[0] and "macro-F1" in table[0]
    rows = table[2:]
    assert len(rows) == 2 and "probe" in rows[0]  # sorted: the pretrained probe is far better
    acc = json.loads((probe_run / "metrics.json").read_text())["val"]["accuracy"]
    assert f"**{acc:.4f}**" in rows[0]
    assert "efficientnet_lite0" in proc.stdout and "test_efficientnet" in proc.stdout
    html = tmp_path / "cmp.html"
    graft("compare", probe_run, other, "--out", html)
    assert "<table>" in html.read_text()
    bad = graft("compare", probe_run, tmp_path / "nope", check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
