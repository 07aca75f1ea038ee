"""graft audit on corrupted copies of real data it builds itself (planted leaks, some re-encoded
and resized, exact duplicates, flipped labels), the clean copy, a text set, and graft train's
quick audit. The full-size figures are measured by benchmarks/audit.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.audit_data import image_copy, scored, text_copy
from tests.conftest import shared_dataset

from .conftest import TINY, graft

pytestmark = pytest.mark.integration
pytest.importorskip("cleanlab")
pytest.importorskip("imagehash")

PER_CLASS = 45  # train and val files per class copied: ~180 photos, 10 of each problem


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("audit") / "hymenoptera_bad"
    return d, image_copy(shared_dataset("hymenoptera_256"), d, per_class=PER_CLASS)


def test_audit_finds_the_planted_leaks_duplicates_and_flipped_labels(
        corrupted: tuple[Path, dict], tmp_path: Path) -> None:
    data, planted = corrupted
    out = tmp_path / "audit"
    proc = graft("audit", data, "--out", out, "-q")
    assert f"open the audit: {out / 'audit.html'}" in proc.stdout
    audit = json.loads((out / "audit.json").read_text())
    got = scored(audit, planted)
    assert got["leaks"] >= 9 and got["duplicates"] == 10 and got["flips"] >= 7, got
    page = (out / "audit.html").read_text()
    assert "Leaks: the same input in two splits" in page and "data:image/jpeg;base64," in page
    rows = (out / "findings.csv").read_text().splitlines()
    assert rows[0].startswith("kind,score,files") and len(rows) == len(audit["findings"]) + 1
    assert audit["summary"]["findings"]["label_issue"] >= 7
    assert {"width", "height", "aspect"} <= set(audit["stats"])


def test_the_clean_copy_has_no_leak(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    image_copy(shared_dataset("hymenoptera_256"), clean, n=0, per_class=PER_CLASS)
    graft("audit", clean, "--out", tmp_path / "a", "-q", "--no-label-issues")
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert scored(audit, {})["leak_findings"] == 0, [f for f in audit["findings"]
                                                     if "leak" in f["kind"]]


def test_text_leaks_across_train_and_test(tmp_path: Path) -> None:
    data = tmp_path / "sms"
    planted = text_copy(shared_dataset("sms_spam"), data, rows=150)
    out = tmp_path / "a"
    graft("audit", data / "train.csv", "--test", data / "test.csv", "--out", out, "-q")
    audit = json.loads((out / "audit.json").read_text())
    found = [f for f in audit["findings"] if f["kind"] in ("leak", "near_leak")]
    hits = sum(any(a in f["items"] and b in f["items"] for f in found)
               for a, b in planted["leaks"])
    assert hits >= 9, found
    assert audit["about"]["modality"] == "text"


def test_train_warns_about_leaks_and_drops_them_on_request(corrupted: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    data, planted = corrupted
    exact_leaks = sum(1 for i, _ in enumerate(planted["leaks"]) if i % 2 == 0)
    proc = graft("train", "--data", data, *TINY, "--epochs", "1", "--out", tmp_path / "r",
                 "--strategy", "last_n")
    assert f"audit: {exact_leaks} leaks" in proc.stderr and "graft audit" in proc.stderr
    assert "audit: 10 exact duplicates" in proc.stderr
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    assert report["audit"]["findings"]["leak"] == exact_leaks
    page = next((tmp_path / "r" / "eval").glob("*/report.html")).read_text()
    assert f"{exact_leaks} leaks" in page
    proc = graft("train", "--data", data, *TINY, "--epochs", "1", "--out", tmp_path / "d",
                 "--strategy", "last_n", "--drop-leaks", "--drop-duplicates")
    report = json.loads((tmp_path / "d" / "data_report.json").read_text())
    assert report["audit"]["dropped"] == exact_leaks + 10
    dropped = [s for s in report["skipped"] if s["reason"].startswith("dropped")]
    assert len(dropped) == exact_leaks + 10
    n_before = sum(sum(c.values()) for c in json.loads(
        (tmp_path / "r" / "data_report.json").read_text())["counts"].values())
    assert sum(sum(c.values()) for c in report["counts"].values()) == n_before - len(dropped)
