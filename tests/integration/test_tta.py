"""Test-time augmentation as a run default (``report.tta``): the training report shows each split
with and without, predict averages the views unless told ``--tta 1``, and asking for more views
than the modality has is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import TINY, graft

pytestmark = pytest.mark.integration


def test_a_run_default_of_three_views(small_csv: Path, hymenoptera: Path, tmp_path: Path
                                      ) -> None:
    out = tmp_path / "run"
    proc = graft("train", "--data", small_csv, "--out", out, "--strategy", "full", "--epochs",
                 "1", *TINY, "report.tta=3")
    assert "val with 3 test-time views: accuracy" in proc.stderr + proc.stdout
    (ev,) = (out / "eval").glob("*-val")
    m = json.loads((ev / "metrics.json").read_text())
    t = m["tta"]
    assert t["views"] == 3 and t["names"] == ["identity", "flip", "zoom centre"]
    assert m["accuracy"] == t["with"]["accuracy"] and m["n"] == 12
    plain = json.loads((out / "metrics.json").read_text())["val"]  # the run's own: no TTA
    assert t["without"]["accuracy"] == pytest.approx(plain["accuracy"])
    assert t["without"]["log_loss"] == pytest.approx(plain["log_loss"], abs=1e-4)
    page = (ev / "report.html").read_text()
    assert 'id="tta"' in page and "identity, flip, zoom centre" in page
    meta = json.loads((out / "meta.json").read_text())
    assert "test-time augmentation" in meta["timings"]
    # the averaged model has its own temperature, fitted on its val outputs; evaluate uses it
    fitted = meta["calibration_tta"]
    assert fitted["views"] == 3 and fitted["fitted_on"] == "val"
    assert t["temperature_with"] == pytest.approx(fitted["temperature"])
    assert t["temperature_without"] == pytest.approx(meta["calibration"]["temperature"])
    again = json.loads(graft("evaluate", out, "--split", "val", "--json").stdout)
    assert again["ece"] == pytest.approx(m["ece"], abs=1e-6)  # the run default: 3 views

    import graftkit

    image = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]
    run = graftkit.load_run(out)
    default, three, one = (run.predict(image, tta=n)[0] for n in (None, 3, 1))
    assert default["prob"] == pytest.approx(three["prob"])
    assert abs(default["prob"] - one["prob"]) > 1e-6  # the views changed the outputs
    # graft calibrate refits the averaged model's calibration too: predict and evaluate use it
    assert fitted["temperature"] != 1.0
    run.calibrate(temperature=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration_tta"]["temperature"] == 1.0 and meta["calibration_tta"]["views"] == 3
    assert run.evaluate(split="val")["calibration"]["temperature"] == 1.0
    bad = graft("predict", out, image, "--tta", "13", check=False)  # the CLI: one line
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--tta 13: image runs have 12 test-time views at most" in bad.stderr
