"""Text perturbations on real SMS messages: registry, determinism, severity order, edge cases,
labels, the benchmark runner and its example table."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from graftkit.errors import ConfigError
from graftkit.robustness.bench import corruption_errors
from graftkit.robustness.perturbations import (
    ALL,
    GROUPS,
    NEIGHBOURS,
    PERTURBATIONS,
    perturb,
    perturb_items,
    resolve_perturbations,
)
from graftkit.robustness.plots import text_examples_html
from graftkit.robustness.text_bench import examples, run_perturbations
from tests.conftest import shared_dataset

EDGE_CASES = ["", " ", "\n\t", "a", "I", "!!", "?!...", "ok.", "hi", "a b", "😀 ü ß"]


@pytest.fixture(scope="module")
def messages() -> list[str]:
    rows = list(csv.reader((shared_dataset("sms_spam") / "test.csv").open(encoding="utf-8")))
    return [r[0] for r in rows[1:61]]


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_registry_groups_and_names():
    from typer.testing import CliRunner

    from graftkit.cli.main import app

    listed = CliRunner().invoke(app, ["list"], env={"COLUMNS": "200"}).stdout
    assert "text perturbations" in listed and all(n in listed for n in ALL)
    assert sorted(ALL) == PERTURBATIONS.names() and len(ALL) == 8
    assert all(PERTURBATIONS.help(n) for n in ALL)  # `graft list` shows a line for each
    assert sorted(n for g in GROUPS.values() for n in g) == sorted(ALL)
    assert resolve_perturbations("all") == ALL
    assert resolve_perturbations("typos, word_swap,char_swap") == [*GROUPS["typos"], "word_swap"]
    for bad in ("gaussian_noise", "typo", ""):
        with pytest.raises(ConfigError, match="text runs choose from: all, typos"):
            resolve_perturbations(bad)
    with pytest.raises(ConfigError, match="severity must be an integer 1-5"):
        perturb("hello", "char_swap", 6)
    with pytest.raises(ConfigError, match="unknown text perturbation 'blur'"):
        perturb("hello", "blur", 1)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_per_seed_and_text(name, messages):
    texts = messages[:20]
    once = [perturb(t, name, 3, seed=7) for t in texts]
    assert [perturb(t, name, 3, seed=7) for t in reversed(texts)] == once[::-1]  # order-free
    assert sum(o != t for o, t in zip(once, texts)) >= 15  # it does something to most texts
    if name not in ("strip_punctuation",):  # punctuation is often all removed at 3: no choice
        assert [perturb(t, name, 3, seed=8) for t in texts] != once


def _words_moved(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a.split(), b.split()))


@pytest.mark.parametrize("name", ALL)
def test_severity_is_monotonic_in_edit_distance(name, messages):
    """Edits at severity s are a subset of those at s + 1 (nested draws), so the edit distance
    from the clean text never falls with severity, for any text, and grows on average.

    Word swaps are the exception per text: Levenshtein distance is sub-additive over swaps
    (swapping "a b" and "c d" in "a b c d" can align cheaper than two separate swaps), so
    there the per-text measure is the number of words out of place."""
    dist = np.array([[_levenshtein(t, perturb(t, name, s)) for s in range(1, 6)]
                     for t in messages])
    mean = dist.mean(0)
    assert (np.diff(mean) >= 0).all() and mean[4] >= 2.5 * mean[0] and mean[0] > 0, mean
    if name == "word_swap":
        dist = np.array([[_words_moved(t, perturb(t, name, s)) for s in range(1, 6)]
                         for t in messages])
    assert (np.diff(dist, axis=1) >= 0).all(), dist[(np.diff(dist, axis=1) < 0).any(1)]


@pytest.mark.parametrize("name", ALL)
def test_edge_cases_do_not_crash_or_empty_a_text(name):
    for t in EDGE_CASES:
        for s in (1, 5):
            out = perturb(t, name, s)
            assert isinstance(out, str)
            assert bool(out.strip()) == bool(t.strip()), (t, out)


def test_what_each_perturbation_does():
    t = "Call NOW, to claim your free prize! Offer ends today."
    typo = perturb(t, "keyboard_typo", 1)
    diff = [(a, b) for a, b in zip(t, typo) if a != b]
    assert len(typo) == len(t) and len(diff) >= 1
    assert all(b.lower() in NEIGHBOURS[a.lower()] and a.isupper() == b.isupper() for a, b in diff)
    assert all(k in NEIGHBOURS[v] for k, ns in NEIGHBOURS.items() for v in ns)  # symmetric
    assert set(NEIGHBOURS["g"]) == set("tyfhvb")
    assert perturb(t, "casing", 5) == t.swapcase()
    assert perturb(t, "strip_punctuation", 5) == t.translate(str.maketrans("", "", ",!."))
    assert sorted(perturb(t, "word_swap", 5).split()) == sorted(t.split())
    assert perturb(t, "whitespace", 5).replace(" ", "") == t.replace(" ", "")
    assert len(perturb(t, "char_insert", 1)) == len(t) + 1
    assert len(perturb(t, "char_delete", 1)) == len(t) - 1
    assert sorted(perturb(t, "char_swap", 5)) == sorted(t)


def test_labels_are_unchanged(messages):
    items = [(t, float(i % 2)) for i, t in enumerate(messages[:10])]
    out = perturb_items(items, "keyboard_typo", 5, seed=1)
    assert [y for _, y in out] == [y for _, y in items]
    assert [t for t, _ in out] == [perturb(t, "keyboard_typo", 5, 1) for t, _ in items]


def _spotter(texts: list[str]) -> np.ndarray:
    """A keyword model: spam (1) iff the lower-cased text holds "free"."""
    spam = np.array([("free" in t.lower()) for t in texts], dtype=float)
    return np.stack([1 - spam, spam], axis=1)


def test_run_perturbations_scores_like_the_corruption_benchmark():
    texts = [f"get your FREE {w} today" for w in ("gift", "phone", "ticket", "voucher")] + [
        f"see you at {w} later" for w in ("lunch", "home", "work", "the gym")]
    targets = np.array([1] * 4 + [0] * 4)
    seen = []
    r = run_perturbations(_spotter, texts, targets, ["casing", "char_delete", "word_swap"],
                          [1, 5], batch_size=3, progress=seen.append)
    assert r["clean_accuracy"] == 1.0 and r["n"] == 8 and r["severities"] == [1, 5]
    assert sum(seen) == 8 * (1 + 3 * 2)
    assert r["corruptions"]["casing"]["severity"] == {"1": 1.0, "5": 1.0}  # lower-cased
    assert r["corruptions"]["word_swap"]["mean"] == 1.0  # a bag of words
    deleted = r["corruptions"]["char_delete"]["severity"]
    assert deleted["5"] < 1.0 and deleted["5"] <= deleted["1"]
    assert r["mca"] == pytest.approx(np.mean([v for e in r["corruptions"].values()
                                              for v in e["severity"].values()]))
    ce = corruption_errors(r, r)
    assert ce["ce"]["char_delete"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="need at least one perturbation"):
        run_perturbations(_spotter, texts, targets, ["casing"], [0])
    # the run's own decision rule: a binary threshold of P(spam) >= 1.01 calls nothing spam
    from graftkit.evaluate.calibration import Calibration

    strict = Calibration(threshold=1.01)
    r = run_perturbations(_spotter, texts, targets, ["casing"], [1], decide=strict.decide)
    assert r["clean_accuracy"] == 0.5


def test_example_table_is_escaped_and_marks_changes():
    texts = ["hi", "Claim <b>your</b> prize: reply YES to 80082 now!"]
    ex = examples(texts, ["char_swap", "casing"], [1, 5])
    assert len(ex) == 1 and ex[0]["text"] == texts[1]  # the one with something to perturb
    assert set(ex[0]["perturbed"]) == {"char_swap", "casing"}
    page = text_examples_html(ex)
    assert "<b>" not in page and "&lt;b&gt;" in page and "<mark>" in page
    assert page.count("<tr>") == 1 + 1 + 2  # clean, severities, one row per perturbation
