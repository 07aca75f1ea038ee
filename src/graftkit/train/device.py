"""Device, precision and memory-format choices, resolved once from the config's ``auto``."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device': cuda requested but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config key 'train.device': mps requested but not available here")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on GPUs that support it, fp16 on
    older CUDA GPUs, fp32 on CPU (CPU autocast is rarely faster and changes the numbers)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type == "cpu":
            raise ConfigError("config key 'train.precision': fp16 needs a GPU; use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def resolve_eval_batch(size: int | None, device: torch.device, batch_size: int) -> int:
    """Batch size for passes without gradients. ``None``: 8 on CPU, where a small batch's
    activations stay in cache (efficientnet_lite0 on 2 cores: about 100 img/s at 8 against 55-70
    at 32), and twice the training batch on accelerators."""
    if size:
        return size
    return 8 if device.type == "cpu" else 2 * batch_size


def resolve_channels_last(name: str, device: torch.device) -> bool:
    """``auto``: on for CUDA and CPU. On CPU, oneDNN's convolutions run NHWC much faster
    (efficientnet_lite0 on 2 cores: about 1.7x for inference, 1.4-2x for training steps)."""
    return name == "on" or (name == "auto" and device.type in ("cuda", "cpu"))
