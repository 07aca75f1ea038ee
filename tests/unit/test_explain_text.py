"""Token attributions for text runs: completeness of integrated gradients, the sanity checks of
Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018) for text, the deletion score,
word merging, the HTML/JSON files of a text run and its errors.

The model is a tiny BERT built locally (2 layers, 32 wide, the built-in bert-base-uncased
vocabulary), trained for a few seconds on 300 real SMS messages so that its attributions mean
something; built once per module.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel

from graftkit import run as rd
from graftkit.config import build_config, to_yaml
from graftkit.errors import ConfigError, DataError, GraftError
from graftkit.explain import explain_run, merge_words, text_faithfulness, token_attributions
from graftkit.explain.text import completeness
from graftkit.models.text import HFTextAdapter, TextDataConfig, save_text_assets
from graftkit.models.text_builtin import tokenizer_dir
from graftkit.train.checkpoint import save_weights
from tests.conftest import shared_dataset

CLASSES = ["ham", "spam"]


def _sms(split: str, per_class: int) -> list[tuple[str, int]]:
    rows = list(csv.reader((shared_dataset("sms_spam") / split).open(encoding="utf-8")))[1:]
    return [(r[0], y) for y, c in enumerate(CLASSES) for r in [x for x in rows if x[1] == c]
            [:per_class]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: these passes are too small to gain from two, and on a busy machine
    two threads waiting on each other double their time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert() -> HFTextAdapter:
    """A 2-layer, 32-wide BERT + head fitted to 300 SMS messages, in eval mode."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = HFTextAdapter(BertModel(cfg, add_pooling_layer=False), tok, 2, 0.0,
                          TextDataConfig("tiny-bert", 48))
    data = _sms("train.csv", 150)
    x, y = model.tokenize([t for t, _ in data]), torch.tensor([c for _, c in data])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(data)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model({k: v[idx] for k, v in x.items()}), y[idx]
                                        ).backward()
            opt.step()
    model.eval().zero_grad(set_to_none=True)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.95  # it learned the messages
    return model


@pytest.fixture(scope="module")
def texts() -> list[tuple[str, int]]:
    """Held-out messages: 6 ham, 6 spam."""
    return _sms("test.csv", 6)


def _scores(model: HFTextAdapter, texts: list[tuple[str, int]], target: int | None = None
            ) -> np.ndarray:
    """Attributions of every real token of every text, concatenated."""
    out = []
    for t, y in texts:
        a = token_attributions(model, t, y if target is None else target)
        out.append(a.scores[~a.special])
    return np.concatenate(out)


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b)[0])


# --- integrated gradients: completeness, baseline, the model left alone -------------------------

def test_attributions_are_complete_and_keep_special_tokens(bert, texts):
    changes = []
    for t, y in texts[::3]:
        a = token_attributions(bert, t, y)
        c = completeness(a)
        # IG's completeness axiom: sum of attributions = f(x) - f(baseline)
        assert c["sum"] == pytest.approx(a.logit - a.baseline_logit, abs=1e-3)
        assert c["relative_error"] < 1e-3
        changes.append(abs(a.logit - a.baseline_logit))
        assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]"
        assert a.special.sum() == 2 and np.all(a.scores[a.special] == 0)  # same in the baseline
        with torch.no_grad():
            logit = bert(bert.tokenize([t]))[0, y]
        assert a.logit == pytest.approx(float(logit), abs=1e-4)
    assert max(changes) > 1.0  # the sums checked are not all trivially ~0


def test_explaining_leaves_the_model_as_it_was(bert, texts):
    before = {n: p.requires_grad for n, p in bert.named_parameters()}
    bert.train()
    try:
        token_attributions(bert, texts[0][0], 0)
        assert bert.training
    finally:
        bert.eval()
    assert {n: p.requires_grad for n, p in bert.named_parameters()} == before
    assert all(p.grad is None for p in bert.parameters())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in bert.modules()) == 0


# --- sanity checks (Adebayo et al. 2018) --------------------------------------------------------

def test_attributions_change_when_weights_are_randomised_layer_by_layer(bert, texts):
    """Cascading randomisation from the head down to the embeddings: the attributions must
    lose their ranking (low Spearman correlation with the trained model's)."""
    original = _scores(bert, texts)
    model = copy.deepcopy(bert)
    torch.manual_seed(1)
    stages = [("head", model.head), *[(f"layer {i}", layer) for i, layer in
                                      reversed(list(enumerate(model.encoder.encoder.layer)))],
              ("embeddings", model.encoder.embeddings)]
    rhos = {}
    for name, module in stages:
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02 if isinstance(m, nn.Embedding) else 0.2)
        rhos[name] = _rho(original, _scores(model, texts))
    # measured: head -0.58 (a random head reverses much of the evidence), layer 1 -0.02,
    # layer 0 -0.20, embeddings 0.02
    assert all(r < 0.5 for r in rhos.values()), rhos
    assert abs(rhos["embeddings"]) < 0.3, rhos


def test_attributions_change_with_the_target(bert, texts):
    ham, spam = _scores(bert, texts, target=0), _scores(bert, texts, target=1)
    assert _rho(ham, spam) < 0.0  # evidence for ham is evidence against spam
    assert not np.allclose(ham, spam, atol=1e-3)


# --- faithfulness -------------------------------------------------------------------------------

def test_deleting_the_most_attributed_tokens_first_beats_random(bert, texts):
    beats, drops = [], []
    for t, y in texts:
        a = token_attributions(bert, t, y)
        f = text_faithfulness(bert, a)
        assert len(f["deletion_curve"]) == f["steps"] + 1
        assert 0 <= f["deletion_auc"] <= 1 and 0 <= f["insertion_auc"] <= 1
        beats.append(f["beats_random"])
        drops.append(text_faithfulness(bert, a, "drop")["beats_random"])
    assert sum(beats) >= 0.8 * len(texts), beats
    assert sum(drops) >= 0.7 * len(texts), drops
    with pytest.raises(ValueError, match="replace"):
        text_faithfulness(bert, a, "blank")


# --- words -------------------------------------------------------------------------------------

def test_word_pieces_merge_into_the_words_as_written(bert):
    text = "Unbelievably GOOD offer!! reply <YES> now"
    a = token_attributions(bert, text, 1)
    words = merge_words(a, text)
    assert [w["word"] for w in words] == ["Unbelievably", "GOOD", "offer", "!", "!", "reply",
                                          "<", "YES", ">", "now"]
    first = words[0]
    assert len(first["pieces"]) > 1 and text[first["start"]:first["end"]] == "Unbelievably"
    pieces = a.scores[1:1 + len(first["pieces"])]
    assert first["attribution"] == pytest.approx(float(pieces.sum()))
    assert sum(w["attribution"] for w in words) == pytest.approx(float(a.scores.sum()))


def test_a_long_text_is_truncated_as_in_training_and_shown_grey(bert):
    from graftkit.explain.text_html import highlight

    text = " ".join(f"word{i}" for i in range(60))  # far over the 48 tokens of max_length
    a = token_attributions(bert, text, 0)
    assert len(a.tokens) == 48 and a.tokens[-1] == "[SEP]"
    html = highlight(text, merge_words(a, text))
    assert html.count("<span") == len(merge_words(a, text)) + 1  # the unseen tail, grey
    assert 'title="truncated: not seen by the model">' in html and "word59" in html


# --- a run directory: files, options, errors ----------------------------------------------------

def _text_run(tmp: Path, model: HFTextAdapter) -> Path:
    """A text run directory holding ``model``, as training would leave it."""
    out = tmp / "run"
    out.mkdir(parents=True)
    save_weights(model, out / rd.WEIGHTS)
    save_text_assets(model, out)
    cfg = build_config(None, {"data.path": "sms.csv", "data.modality": "text",
                              "model.name": "tiny-bert"})
    (out / rd.CONFIG).write_text(to_yaml(cfg))
    rd.write_json(out / rd.META, {
        "task": "classification", "modality": "text", "classes": CLASSES, "num_outputs": 2,
        "status": "completed", "strategy": "full", "preprocessing": model.data_config.to_dict(),
        "model": {"name": "tiny-bert", "arch": "tiny-bert", "dropout": 0.0},
        "calibration": {"temperature": 1.0}})
    return out


def test_explain_a_text_run_writes_html_json_and_an_index(bert, texts, tmp_path, capsys):
    from graftkit.explain import cli_explain

    run = _text_run(tmp_path, bert)
    lines = tmp_path / "in.txt"
    lines.write_text(f"{texts[-1][0]}\n\n   \n{texts[0][0]}\n", encoding="utf-8")
    sheet = tmp_path / "in.csv"
    sheet.write_text('text,other\n"Call <script>alert(1)</script> FREE now",x\n,y\n',
                     encoding="utf-8")
    records = explain_run(run, [lines, sheet], texts=["win a free prize"], out_dir=tmp_path / "o",
                          topk=5)
    assert [r["input"] for r in records] == ["--text 1", f"{lines}:1", f"{lines}:4",
                                             f"{sheet} row 1"]
    for r in records:
        assert r["method"] == "integrated-gradients" and r["target"] == r["predicted"]
        assert json.loads(Path(r["json"]).read_text()) == r
        assert [t["label"] for t in r["top"]][0] == r["predicted"] and len(r["top"]) == 2
        assert r["completeness"]["relative_error"] < 1e-3 and "beats_random" in r["faithfulness"]
        page = Path(r["html"]).read_text()
        assert f"predicted: {r['predicted']}" in page and "rgba(" in page
    page = Path(records[-1]["html"]).read_text()
    assert "<script>" not in page and "&lt;" in page  # the user's text is escaped
    index = (tmp_path / "o" / "index.html").read_text()
    assert all(Path(r["html"]).name in index for r in records)

    chosen = explain_run(run, [], texts=[texts[-1][0]], target="ham", out_dir=tmp_path / "o2")
    assert chosen[0]["target"] == "ham" and chosen[0]["predicted"] == "spam"

    cli_explain(run, [], None, None, tmp_path / "o3", 2, texts=["see you at lunch"])
    line, summary = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(str(tmp_path / "o3" / "001-see_you_at_lunch.html"))
    assert "predicted:" in line and "deletion AUC" in line
    assert summary.startswith("1 text(s) explained")


def test_explain_text_run_errors(bert, tmp_path):
    run = _text_run(tmp_path, bert)
    ok = ["free prize"]
    cases = [
        (dict(texts=ok, target="eggs"), GraftError, "unknown class 'eggs'.*ham, spam"),
        (dict(texts=["  "]), DataError, "--text number 1 is empty"),
        (dict(texts=ok, method="gradcam"), ConfigError, "'gradcam' does not explain text runs"),
        (dict(texts=ok, method="lime"), ConfigError, "unknown explanation method 'lime'"),
        (dict(inputs=[tmp_path / "nope.txt"]), DataError, "does not exist"),
        (dict(inputs=[tmp_path]), DataError, "a folder"),
        (dict(inputs=[run / rd.META]), DataError, "not a .txt or .csv file"),
        (dict(), DataError, "no texts given"),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=message):
            explain_run(run, kw.pop("inputs", []), out_dir=tmp_path / "o", **kw)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="no texts in this file"):
        explain_run(run, [blank], out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written before the inputs were checked
