"""`graft explain` and `graft robustness` on a real text run: the offline MiniLM-L3 linear probe
on a slice of sms_spam (real messages)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import shared_dataset

from .conftest import graft

pytestmark = pytest.mark.integration
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPAM = "WINNER!! You have won a FREE prize, call 08001234567 now to claim"
HAM = "see you at lunch tomorrow?"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in the graft processes started (as train.threads=1 elsewhere):
    on a busy 2-core machine two threads each double the time of these small forward passes."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sms_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, test CSV): a linear probe trained on 60 + 60 messages; 20 + 20 to test."""
    src = shared_dataset("sms_spam")
    d = tmp_path_factory.mktemp("sms-xr")

    def take(name: str, per_class: int) -> list[list[str]]:
        rows = list(csv.reader((src / name).open(encoding="utf-8")))[1:]
        return [r[:2] for c in ("ham", "spam") for r in [x for x in rows if x[1] == c][:per_class]]

    for name, n in (("train.csv", 60), ("test.csv", 20)):
        with (d / name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text", "label"], *take(name, n)])
    run = d / "probe"
    graft("train", "--data", d / "train.csv", "--out", run, "--model", "paraphrase-MiniLM-L3-v2",
          "--strategy", "linear_probe", "--epochs", "20", "train.threads=1",
          "report.enabled=false")
    return run, d / "test.csv"


def test_explain_a_text_run(sms_run: tuple[Path, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
                            ) -> None:
    from graftkit.cli.main import main
    from graftkit.errors import ConfigError
    from graftkit.explain import explain_run

    run, _ = sms_run
    texts = tmp_path / "texts.txt"
    texts.write_text("Urgent! Your mobile number has been awarded a 2000 cash prize. Call "
                     "09061790121\n\nare you coming home for dinner tonight?\n", encoding="utf-8")
    out = tmp_path / "x"
    proc = graft("explain", run, texts, "--text", SPAM, "--text", HAM, "--out", out)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("4 text(s) explained")
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [r["input"] for r in records] == ["--text 1", "--text 2", f"{texts}:1", f"{texts}:3"]
    assert [r["predicted"] for r in records] == ["spam", "ham", "spam", "ham"]
    for r, line in zip(records, lines):
        assert line.startswith(f"{r['html']}  predicted: {r['predicted']}")
        assert r["completeness"]["relative_error"] < 1e-2
        assert Path(r["html"]).is_file() and "rgba(" in Path(r["html"]).read_text()
    words = {w["word"]: w["attribution"] for w in records[0]["words"]}
    assert "FREE" in words and "08001234567" in words  # word pieces merged back, as written
    spam = [r for r in records if r["predicted"] == "spam"]
    assert all(r["faithfulness"]["beats_random"] for r in spam), [r["faithfulness"] for r in spam]
    assert (out / "index.html").is_file()

    monkeypatch.setattr(sys, "argv", ["graft", "explain", str(run), "--text", SPAM, "--method",
                                      "gradcam", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit) as exit_:
        main()  # in this process: a second CLI start-up would add seconds for an error line
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: method 'gradcam' does not explain")
    assert len(err.strip().splitlines()) == 1

    sheet = tmp_path / "two.csv"  # the run's text column; the empty row skipped
    sheet.write_text("id,text\n1,free entry to win cash\n2,\n", encoding="utf-8")
    other = explain_run(run, [sheet], target="ham", out_dir=tmp_path / "y", topk=1)
    assert [(r["input"], r["target"]) for r in other] == [(f"{sheet} row 1", "ham")]
    with pytest.raises(ConfigError, match="unknown class 'eggs'"):
        explain_run(run, [sheet], target="eggs", out_dir=tmp_path / "z")


def test_robustness_of_a_text_run(sms_run: tuple[Path, Path]) -> None:
    from graftkit.api import Run
    from graftkit.errors import ConfigError

    run, test = sms_run
    proc = graft("robustness", run, "--data", test, "--severities", "1,5", "-q")
    assert "mCA" in proc.stdout and "weakest:" in proc.stdout
    out = run / "robustness"
    r = json.loads((out / "results.json").read_text())
    assert r["modality"] == "text" and r["kind"] == "perturbations" and r["n"] == 40
    assert list(r["corruptions"]) == ["keyboard_typo", "char_insert", "char_delete",
                                      "char_swap", "casing", "strip_punctuation", "whitespace",
                                      "word_swap"]
    assert r["severities"] == [1, 5] and r["clean_accuracy"] >= 0.8
    # MiniLM's tokenizer lower-cases: casing cannot change a prediction
    assert r["corruptions"]["casing"]["mean"] == r["clean_accuracy"]
    assert r["corruptions"]["keyboard_typo"]["severity"]["5"] <= r["clean_accuracy"]
    assert 0 < r["mca"] <= 1 and r["relative_robustness"] == pytest.approx(
        r["mca"] / r["clean_accuracy"])
    ex = r["examples"][0]
    assert set(ex["perturbed"]) == set(r["corruptions"]) and ex["text"] in test.read_text()
    assert {p.name for p in out.iterdir()} == {"results.json", "accuracy_vs_severity.png",
                                               "heatmap.png", "examples.png", "examples.html"}
    report = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: "))
    page = report.read_text()
    assert "Robustness to text perturbations" in page and 'class="text-examples"' in page
    ev = json.loads((report.parent / "metrics.json").read_text())
    assert ev["n"] == 40 and ev["accuracy"] == pytest.approx(r["clean_accuracy"])

    again = Run(run).robustness(test, corruptions="char_swap", severities="5", reference=run)
    assert again["reference"]["mce"] == pytest.approx(1.0)  # the run against its own results
    with pytest.raises(ConfigError, match="unknown text perturbation 'fog'"):
        Run(run).robustness(test, corruptions="fog")
