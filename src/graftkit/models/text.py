"""The Hugging Face text adapter: a transformers encoder (built-in wheel, local dir or hub name)
with a pooled-feature head, optionally fine-tuned with LoRA (peft).

Inputs are dicts of token tensors (``input_ids``, ``attention_mask``, optional
``token_type_ids``) made by the adapter's own ``collate`` / ``tokenize``. The encoder's pooler is
removed: features are mean-pooled over the attention mask (sentence-transformers' recipe, what
the built-ins were trained for) or the ``[CLS]`` hidden state, so the pooler would be an unused,
untrained layer.

A run directory carries ``text_model/`` (``save_text_assets``: the encoder's config.json and the
tokenizer files, no weights), so ``rebuild_text_model`` needs neither the hub nor the wheels.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .. import run as rd
from ..data.text import TextCollator, TextDataset, percentile
from ..errors import ConfigError, GraftError
from ..registry import Registry
from .base import HeadedAdapter
from .text_builtin import (
    DEFAULT_TEXT_MODEL,
    TEXT_BUILTINS,
    TextBuiltin,
    builtin_model_dir,
    load_onnx_builtin,
    onnx_config,
    tokenizer_dir,
)

TEXT_MODELS: Registry[TextBuiltin] = Registry("text model")
for _name, _spec in TEXT_BUILTINS.items():
    TEXT_MODELS.register(_name, _spec.help + (" (default)" if _name == DEFAULT_TEXT_MODEL
                                              else ""))(_spec)

POOLINGS = ("mean", "cls")
TEXT_ASSETS = rd.TEXT_ASSETS  # inside a run directory: config.json + tokenizer files
# Hub names with one of these (case-insensitive) are text encoders; see is_text_model.
TEXT_NAME_HINTS = ("bert", "minilm", "roberta", "distil", "electra", "deberta", "mpnet", "xlm",
                   "sentence-transformers/")
# (query, value) projection names of BERT-like families, tried in order for LoRA's targets.
LORA_TARGETS = (("query", "value"), ("q_lin", "v_lin"), ("query_proj", "value_proj"),
                ("q_proj", "v_proj"), ("q", "v"))


@dataclass(frozen=True)
class TextDataConfig:
    """What a text model expects of its input; saved in the run metadata (``kind: text``)."""

    tokenizer: str  # a built-in name, a local directory or a hub name
    max_length: int
    pooling: str = "mean"  # "mean" | "cls"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"config key 'model.pooling': {self.pooling!r} is not one of "
                              f"{', '.join(POOLINGS)}")
        if self.max_length < 2:
            raise ConfigError(f"config key 'model.max_length': {self.max_length} leaves no room "
                              "for text (at least 2: [CLS] and [SEP])")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextDataConfig:
        if d.get("kind") != "text":
            raise GraftError(f"preprocessing of kind {d.get('kind')!r} is not for a text model")
        return cls(str(d["tokenizer"]), int(d["max_length"]), str(d["pooling"]))


class HFTextAdapter(HeadedAdapter):
    """``backbone`` is a transformers encoder (``AutoModel``, no pooler), or its peft wrapper
    once :func:`apply_lora` ran; ``head`` maps pooled ``(B, F)`` features to ``(B, K)``."""

    modality = "text"

    def __init__(self, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase, num_outputs: int,
                 dropout: float, data_config: TextDataConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.num_features = int(backbone.config.hidden_size)
        self._data_config = data_config
        self.head = self._make_head(num_outputs, dropout)

    @property
    def has_lora(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    @property
    def encoder(self) -> nn.Module:
        """The transformers model itself, under the peft wrapper if there is one."""
        return self.backbone.get_base_model() if self.has_lora else self.backbone

    @property
    def max_positions(self) -> int:
        """The longest input the encoder takes (position embeddings, tokenizer limit)."""
        return _max_positions(self.encoder.config, self.tokenizer)

    def features(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token tensors -> pooled ``(B, F)``: the mean over real tokens, or ``[CLS]``."""
        inputs = {k: x[k] for k in self.tokenizer.model_input_names if k in x}
        h = self.backbone(**inputs).last_hidden_state  # (B, T, F)
        if self._data_config.pooling == "cls":
            return h[:, 0]
        mask = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, F)

    def make_dataset(self, items: Sequence[tuple[str, float]], task: str,
                     augment: str = "none") -> Dataset:
        """``(text, target)`` pairs -> a dataset of the same pairs (tokenized in ``collate``).
        Text is not augmented in supervised training; ``augment="strong"`` is FixMatch's strong
        view (a token-level perturbation), every other preset reads the texts as they are."""
        return TextDataset(items, task, augment)

    @property
    def collate(self) -> TextCollator:
        """``[(text, target), ...]`` -> ``(BatchEncoding of LongTensors, targets)``: padded to
        the batch's longest text, truncated at ``max_length``; picklable for DataLoader workers."""
        return TextCollator(self.tokenizer, self._data_config.max_length)

    def tokenize(self, texts: Sequence[str]) -> Mapping[str, torch.Tensor]:
        """Texts -> model input, as in training (for prediction)."""
        return self.collate.encode(texts)

    def input_signature(self) -> str:
        """What the features depend on besides weights and data (a feature-cache key part)."""
        tok, dc = self.tokenizer, self._data_config
        return (f"text|{type(tok).__name__}|{tok.name_or_path}|{len(tok)}|{dc.max_length}|"
                f"{dc.pooling}")

    def set_max_length(self, max_length: int) -> None:
        """Change the truncation length (e.g. to :func:`choose_max_length` of the data's)."""
        _check_max_length(max_length, self.max_positions)
        self._data_config = replace(self._data_config, max_length=max_length)

    def _layer_list(self) -> tuple[str, int]:
        """``(parameter-name prefix, count)`` of the encoder's list of transformer layers."""
        n_cfg = getattr(self.encoder.config, "num_hidden_layers", None)
        lists = [(name, len(m)) for name, m in self.named_modules()
                 if isinstance(m, nn.ModuleList) and name.startswith("backbone.")]
        if not lists:
            raise GraftError(f"{type(self.encoder).__name__} has no list of layers to group")
        name, n = next(((nm, k) for nm, k in lists if k == n_cfg), max(lists, key=lambda t: t[1]))
        return name + ".", n

    def blocks(self) -> list[list[str]]:
        """Backbone parameter names, input -> output: [embeddings] + one group per layer (+ any
        parameters after the layers, e.g. a final norm).

        With LoRA the frozen pretrained weights are not blocks: each layer's group holds its LoRA
        parameters only, so unfreezing the last N blocks trains LoRA in the last N layers.
        """
        prefix, n = self._layer_list()
        before: list[str] = []
        layers: list[list[str]] = [[] for _ in range(n)]
        after: list[str] = []
        for name, _ in self.named_parameters():
            if not name.startswith("backbone.") or (self.has_lora and "lora_" not in name):
                continue
            if name.startswith(prefix):
                layers[int(name[len(prefix):].split(".", 1)[0])].append(name)
            else:
                (after if any(layers) else before).append(name)
        return [g for g in (before, *layers, after) if g]

    @property
    def data_config(self) -> TextDataConfig:
        return self._data_config

    @property
    def explain_layer(self) -> nn.Module:
        """The word embeddings: token attributions (integrated gradients) are taken there."""
        return self.encoder.get_input_embeddings()


def _max_positions(config: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    n = int(getattr(config, "max_position_embeddings", 512))
    limit = tokenizer.model_max_length
    return min(n, int(limit)) if limit < 1_000_000 else n  # huge = the tokenizer sets none


def _check_max_length(max_length: int, positions: int) -> None:
    if max_length > positions:
        raise ConfigError(f"config key 'model.max_length': {max_length} is more than the "
                          f"model's {positions} positions")


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No "Loading weights" bar from transformers for a local load (the CLI has its own)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _drop_pooler(backbone: nn.Module) -> nn.Module:
    """Remove the (unused) pooler so that no untrained parameters are in the model."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


def _local_model_dir(name: str) -> Path | None:
    p = Path(name).expanduser()
    if not p.is_dir():
        return None
    if not (p / "config.json").is_file():
        raise ConfigError(f"config key 'model.name': directory {str(p)!r} has no config.json "
                          "(expected a Hugging Face model directory)")
    return p


def _fail(name: str, e: Exception, local: bool) -> GraftError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if local:
        return GraftError(f"cannot load the model in {name!r}: {first}")
    return GraftError(
        f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}): this needs a "
        f"network; with none, use a built-in ({', '.join(TEXT_MODELS.names())}) or a local model "
        "directory"
    )


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a built-in name, a local directory or a hub name."""
    source = str(tokenizer_dir(spec)) if spec in TEXT_BUILTINS else spec
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - hub and file errors come in many types
        raise _fail(spec, e, Path(source).is_dir()) from None


def _load_encoder(name: str, pretrained: bool) -> nn.Module:
    if name in TEXT_BUILTINS:
        model_dir = builtin_model_dir(name)
        if model_dir is None:  # the ONNX built-in
            return load_onnx_builtin(name) if pretrained else AutoModel.from_config(onnx_config())
        source, local = str(model_dir), True
    else:
        local_dir = _local_model_dir(name)
        source, local = (str(local_dir), True) if local_dir else (name, False)
    try:
        if not pretrained:
            return AutoModel.from_config(AutoConfig.from_pretrained(source))
        with _no_progress_bar() if local else nullcontext():  # downloads keep their bars
            return AutoModel.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - hub and file errors come in many types
        raise _fail(name, e, local) from None


def create_text_model(
    name: str,
    num_outputs: int,
    *,
    pretrained: bool = True,
    dropout: float = 0.1,
    max_length: int | None = None,
    pooling: str = "mean",
) -> HFTextAdapter:
    """A text encoder + new head. ``pretrained=False``: the same architecture, randomly
    initialised. ``max_length`` defaults to a built-in's training length, else the model's
    limit; see :func:`choose_max_length` to fit it to the data."""
    backbone = _drop_pooler(_load_encoder(name, pretrained))
    tokenizer = load_tokenizer(name)
    positions = _max_positions(backbone.config, tokenizer)
    if max_length is None:
        builtin = TEXT_BUILTINS.get(name)
        max_length = min(builtin.max_length, positions) if builtin else positions
    _check_max_length(max_length, positions)
    return HFTextAdapter(backbone, tokenizer, num_outputs, dropout,
                         TextDataConfig(name, max_length, pooling))


def save_text_assets(adapter: HFTextAdapter, run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/text_model/``: the encoder's config.json and the tokenizer files (no
    weights: those are the run's model.safetensors). Returns the directory."""
    out = Path(run_dir) / TEXT_ASSETS
    out.mkdir(parents=True, exist_ok=True)
    adapter.encoder.config.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    return out


def rebuild_text_model(meta_model: Mapping[str, Any], num_outputs: int, dropout: float,
                       data_config: TextDataConfig, run_dir: str | Path) -> HFTextAdapter:
    """The architecture of a saved run from ``RUN_DIR/text_model/`` (random weights: the run's
    own are loaded next), with the run's tokenizer; nothing is fetched."""
    assets = Path(run_dir) / TEXT_ASSETS
    if not (assets / "config.json").is_file():
        raise GraftError(f"run {str(run_dir)!r} has no {TEXT_ASSETS}/config.json: it cannot "
                         f"rebuild its text model {meta_model.get('name')!r}")
    try:
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(str(assets)))
        tokenizer = AutoTokenizer.from_pretrained(str(assets))
    except Exception as e:  # noqa: BLE001 - a damaged run directory
        raise _fail(str(assets), e, True) from None
    return HFTextAdapter(_drop_pooler(backbone), tokenizer, num_outputs, dropout, data_config)


def is_text_model(name: str) -> bool:
    """Whether ``name`` is a text model (else a timm one). The rule, in order:

    1. a built-in text model name: yes;
    2. a local directory: yes if its config.json is a transformers config (has ``model_type``;
       timm's have none);
    3. a timm model name (``timm.is_model``) or an ``hf-hub:``/``timm/`` name: no;
    4. otherwise yes if the name contains (any case) one of ``TEXT_NAME_HINTS``: bert, minilm,
       roberta, distil, electra, deberta, mpnet, xlm, sentence-transformers/.
    """
    if name in TEXT_MODELS:
        return True
    p = Path(name).expanduser()
    if p.is_dir():
        try:
            return "model_type" in json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return False
    if name.startswith(("hf-hub:", "timm/")) or timm.is_model(name):
        return False
    return any(h in name.lower() for h in TEXT_NAME_HINTS)


def choose_max_length(lengths: Sequence[int], limit: int = 512) -> int:
    """A truncation length for texts of these token lengths: the 99th percentile (1% of texts
    lose their end) rounded up to a multiple of 8, at least 16, at most ``limit`` (pass the
    model's ``max_positions``). Batches are padded to their longest text only, so a long limit
    costs nothing for short batches."""
    if not lengths:
        return min(16, limit)
    n = -(-percentile(lengths, 99) // 8) * 8
    return min(limit, max(16, n))


def lora_targets(backbone: nn.Module) -> list[str]:
    """The attention query/value projections' names in a BERT-like encoder."""
    leaves = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules()
              if isinstance(m, nn.Linear)}
    for pair in LORA_TARGETS:
        if set(pair) <= leaves:
            return list(pair)
    raise ConfigError(f"no attention query/value layers found for LoRA in "
                      f"{type(backbone).__name__}; name target_modules among: "
                      f"{', '.join(sorted(leaves))}")


def apply_lora(adapter: HFTextAdapter, r: int = 8, alpha: int = 16, dropout: float = 0.1,
               target_modules: Sequence[str] | None = None) -> int:
    """Wrap the encoder with LoRA (peft): the pretrained weights freeze; LoRA matrices and the
    head train. Returns the number of trainable parameters."""
    from peft import LoraConfig, get_peft_model

    if adapter.has_lora:
        raise GraftError("this model already has LoRA adapters")
    targets = list(target_modules) if target_modules else lora_targets(adapter.backbone)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none")
    with warnings.catch_warnings():  # peft calls an API transformers 5 deprecates; not ours
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        adapter.backbone = get_peft_model(adapter.backbone, config)
    adapter.backbone.train(adapter.training)  # new LoRA dropouts follow the model's mode
    for p in adapter.head.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in adapter.parameters() if p.requires_grad)


def merge_lora(adapter: HFTextAdapter) -> None:
    """Fold the LoRA updates into the weights and drop peft: ``adapter.backbone`` is a plain
    transformers model again, with the original state-dict names. No-op without LoRA."""
    if adapter.has_lora:
        adapter.backbone = adapter.backbone.merge_and_unload()


def merged_state_dict(adapter: HFTextAdapter) -> dict[str, torch.Tensor]:
    """The state dict ``merge_lora`` would give, leaving ``adapter`` as it is (a checkpoint
    during LoRA training that loads into :func:`rebuild_text_model`)."""
    if not adapter.has_lora:
        return adapter.state_dict()
    plain = copy.deepcopy(adapter.backbone).merge_and_unload()
    return {**{f"backbone.{k}": v for k, v in plain.state_dict().items()},
            **{f"head.{k}": v for k, v in adapter.head.state_dict().items()}}
