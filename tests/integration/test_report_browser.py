"""Open a generated report.html in a real headless Chromium (Playwright driving Debian's
/usr/bin/chromium): every image loads, the summary shows metrics.json's numbers, no console
errors. The screenshot goes to $GRAFT_TEST_OUTPUT (default: test-output/ in the checkout).

CI sets GRAFT_REQUIRE_BROWSER=1, so a missing browser there is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _number(run: Path, metrics: dict, key: str) -> float:
    """The number behind a summary tile: metrics.json's, or for ``robustness.*`` (once another
    test has scored the shared probe's robustness) robustness/results.json's."""
    parts = key.split(".")
    value: object = metrics
    if parts[0] == "robustness":
        value, parts = json.loads((run / "robustness" / "results.json").read_text()), parts[1:]
    for part in parts:
        value = value[part]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def test_report_renders_in_chromium(browser, probe_run: Path) -> None:  # noqa: ANN001
    ev = probe_run / "eval" / "hymenoptera_256-val"
    metrics = json.loads((ev / "metrics.json").read_text())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url[:80]))
    page.goto((ev / "report.html").as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
    assert len(images) >= 7 + 12  # the figures and the top-losses gallery
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"

    shown = page.eval_on_selector_all(
        ".kpi .value", "els => els.map(e => [e.dataset.key, e.textContent.trim()])")
    assert {k for k, _ in shown} >= {"accuracy", "macro_f1", "ece", "log_loss"}
    for key, text in shown:
        value = _number(probe_run, metrics, key)
        assert text == f"{value:.4f}", (key, text, value)
    before = page.text_content('[data-key="uncalibrated.ece"]')
    assert before == f"{metrics['uncalibrated']['ece']:.4f}"

    errors = [m for m in messages if m.startswith(("error", "pageerror"))]
    assert not errors and not failed, (errors, failed)
    out = Path(os.environ.get("GRAFT_TEST_OUTPUT", ROOT / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "report.png"), full_page=True)
    assert (out / "report.png").stat().st_size > 50_000
    page.close()
