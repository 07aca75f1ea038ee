"""The model adapter protocol: one interface for every backbone and modality (modelled on timm).

Only adapters know the modality. Strategies, the training loop, evaluation and (later) explain,
export and serving talk to a model through this protocol alone.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


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
