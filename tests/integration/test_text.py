"""Text classification end to end: the same commands and run directory as images, on real SMS
and TREC questions with the offline MiniLM encoders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import shared_dataset

from .conftest import graft, read_history

pytestmark = pytest.mark.integration
os.environ.setdefault("HF_HUB_OFFLINE", "1")
L3 = ["--model", "paraphrase-MiniLM-L3-v2", "train.threads=2"]


@pytest.fixture(scope="module")
def sms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A balanced slice of sms_spam (real messages): 160 to train (20% split off for val), 60 to
    test,
    plus rows the reader must skip."""
    import csv

    src = shared_dataset("sms_spam")
    d = tmp_path_factory.mktemp("sms")

    def take(name: str, per_class: int) -> list[list[str]]:
        rows = list(csv.reader((src / name).open(encoding="utf-8")))[1:]
        return [r[:2] for c in ("ham", "spam") for r in [x for x in rows if x[1] == c][:per_class]]

    train, test = d / "train.csv", d / "test.csv"
    with train.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([["text", "label"], *take("train.csv", 80), ["   ", "ham"], ["no label", ""]])
    with test.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *take("test.csv", 30)])
    return train, test


def test_text_linear_probe_predict_evaluate(sms: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = sms
    out = tmp_path / "probe"
    graft("train", "--data", train, "--test", test, "--out", out, *L3, "--epochs", "20")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["modality"] == "text" and meta["classes"] == ["ham", "spam"]
    assert meta["preprocessing"]["kind"] == "text" and meta["preprocessing"]["max_length"] >= 16
    assert (out / "text_model" / "config.json").is_file()  # the run rebuilds without a hub
    report = json.loads((out / "data_report.json").read_text())
    assert report["n_skipped"] == 2 and {s["reason"] for s in report["skipped"]} == {
        "empty text", "missing label"}
    assert report["text"]["tokens"]["train"]["n"] == 128
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["macro_f1"] >= 0.85, m["test"]  # 128 training texts, frozen encoder
    page = (out / "eval" / f"{train.parent.name}-train-test" / "report.html").read_text()
    assert 'class="text"' in page  # the top-losses gallery shows texts, not thumbnails
    pred = json.loads(graft("predict", out, "WINNER!! Claim your free prize now, call 0800",
                            "see you at lunch tomorrow?", "--json").stdout)
    assert [p["label"] for p in pred] == ["spam", "ham"]
    ev = json.loads(graft("evaluate", out, "--data", test, "--json").stdout)
    assert ev["n"] == 60 and ev["accuracy"] == pytest.approx(m["test"]["accuracy"])
    bad = graft("predict", out, "  ", check=False)
    assert bad.returncode == 2 and "empty text" in bad.stderr
    lines = tmp_path / "messages.txt"  # a file of texts is read, not classified as a text
    lines.write_text("WINNER!! Claim your free prize now, call 0800\n\n"
                     "see you at lunch tomorrow?\n")
    from_file = json.loads(graft("predict", out, lines, test, "--json").stdout)
    assert [p["input"] for p in from_file[:2]] == [p["input"] for p in pred]
    assert [p["label"] for p in from_file[:2]] == ["spam", "ham"]
    assert len(from_file) == 2 + ev["n"]  # and every text of the CSV's text column


def test_text_lora_trains_few_parameters_and_merges(sms: tuple[Path, Path], tmp_path: Path
                                                    ) -> None:
    train, _ = sms
    out = tmp_path / "lora"
    graft("train", "--data", train, "--strategy", "lora", "--out", out, *L3, "--epochs", "2",
          "report.enabled=false")
    hist = read_history(out)
    total = json.loads((out / "meta.json").read_text())["model"]["total_params"]
    assert len(hist) == 2 and hist[0]["trainable_params"] <= 0.05 * total
    keys = load_file(str(out / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)  # merged into plain weights
    pred = json.loads(graft("predict", out, "free entry to win cash", "--json").stdout)
    assert pred[0]["label"] in ("ham", "spam")


def test_text_full_and_gradual_fine_tune(sms: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = sms
    graft("train", "--data", train, "--strategy", "gradual", "--out", tmp_path / "g", *L3,
          "--epochs", "2", "report.enabled=false")
    hist = read_history(tmp_path / "g")
    assert hist[0]["trainable_params"] < hist[1]["trainable_params"]  # one more layer unfrozen


def test_text_input_errors(sms: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = sms
    bad = graft("train", "--data", train, "--out", tmp_path / "a", "--text-column", "body",
                "--task", "text-classification", check=False)
    assert bad.returncode == 2 and "no column 'body'" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = graft("train", "--data", train, "--out", tmp_path / "b", "--model",
                "efficientnet_lite0", check=False)
    assert bad.returncode == 2 and "not a text model" in bad.stderr
    bad = graft("train", "--data", train, "--out", tmp_path / "c", "--augment", "strong",
                check=False)
    assert bad.returncode == 2 and "text runs take none" in bad.stderr
