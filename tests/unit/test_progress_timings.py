"""Where the time went: exclusive seconds per phase (Reporter.phase) and the process's age."""

from __future__ import annotations

import time

import pytest

from graftkit.train.progress import Reporter, process_age


def test_nested_phases_count_their_time_once() -> None:
    r = Reporter(quiet=True)
    with r.phase("training"):
        time.sleep(0.05)
        with r.phase("features"):
            time.sleep(0.1)
        with r.phase("features"):
            time.sleep(0.05)
    with r.phase("report"):
        with r.phase("gallery"):
            time.sleep(0.02)
    t = r.timings()
    assert list(t) == ["features", "training", "gallery", "report"]  # the order they ended
    assert t["features"] == pytest.approx(0.15, abs=0.04)
    assert t["training"] == pytest.approx(0.05, abs=0.04)  # less the features inside it
    assert t["report"] < 0.02 and t["gallery"] == pytest.approx(0.02, abs=0.02)
    r.add_time("features", 1.0)
    assert r.timings()["features"] == pytest.approx(1.15, abs=0.04)


def test_a_phase_that_raises_is_still_counted() -> None:
    r = Reporter(quiet=True)
    with pytest.raises(KeyboardInterrupt), r.phase("training"):
        raise KeyboardInterrupt
    assert "training" in r.timings()


def test_process_age_is_this_process_lifetime() -> None:
    age = process_age()
    if age is None:
        pytest.skip("no /proc here")
    assert 0.0 < age < time.monotonic() + 1  # started after boot
    time.sleep(0.2)
    assert process_age() - age == pytest.approx(0.2, abs=0.1)
