"""Preprocessing and augmentation, built on torchvision.transforms.v2.

Preprocessing (size, crop, interpolation, mean/std) comes from the model's ``data_config``, never
from the user. Augmentation presets are registered by name; each takes the data config and returns
the training transform (it must end with the same normalisation as evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..registry import Registry


@dataclass(frozen=True)
class DataConfig:
    """What a model expects of its input; saved in the run metadata and reused by predict."""

    input_size: int
    crop_pct: float
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        return cls(
            int(d["input_size"]), float(d["crop_pct"]), str(d["interpolation"]),
            tuple(d["mean"]), tuple(d["std"]),  # type: ignore[arg-type]
        )


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BILINEAR
    )


def _finish(dc: DataConfig) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(dc.mean, dc.std)]


def eval_transform(dc: DataConfig) -> T.Compose:
    """Resize the short side to size/crop_pct, centre-crop ``size`` (timm's eval recipe)."""
    return T.Compose([*eval_view(dc).transforms, *_finish(dc)])


AugmentFn = Callable[[DataConfig], Callable]
AUGMENTATIONS: Registry[AugmentFn] = Registry("augmentation preset")


@AUGMENTATIONS.register("none", "no augmentation: the evaluation transform")
def _none(dc: DataConfig) -> T.Compose:
    return eval_transform(dc)


def _crop(dc: DataConfig, scale: tuple[float, float]) -> T.RandomResizedCrop:
    return T.RandomResizedCrop(dc.input_size, scale=scale, interpolation=_interp(dc.interpolation),
                               antialias=True)


@AUGMENTATIONS.register("light", "random resized crop (scale 0.6-1) and horizontal flip")
def _light(dc: DataConfig) -> T.Compose:
    return T.Compose([_crop(dc, (0.6, 1.0)), T.RandomHorizontalFlip(), *_finish(dc)])


@AUGMENTATIONS.register("standard", "crop (0.25-1), flip, rotation 15 deg, colour jitter")
def _standard(dc: DataConfig) -> T.Compose:
    return T.Compose([
        _crop(dc, (0.25, 1.0)), T.RandomHorizontalFlip(), T.RandomRotation(15),
        T.ColorJitter(0.3, 0.3, 0.3, 0.05), *_finish(dc),
    ])


@AUGMENTATIONS.register("strong", "crop (0.08-1), flip, TrivialAugmentWide, random erasing")
def _strong(dc: DataConfig) -> T.Compose:
    return T.Compose([
        _crop(dc, (0.08, 1.0)), T.RandomHorizontalFlip(), T.TrivialAugmentWide(), *_finish(dc),
        T.RandomErasing(p=0.25),
    ])


@AUGMENTATIONS.register("randaugment", "crop (0.08-1), flip, RandAugment(2, 9)")
def _randaugment(dc: DataConfig) -> T.Compose:
    return T.Compose([
        _crop(dc, (0.08, 1.0)), T.RandomHorizontalFlip(), T.RandAugment(2, 9), *_finish(dc),
    ])


@AUGMENTATIONS.register("augmix", "crop (0.25-1), flip, AugMix (severity 3, width 3); for "
                        "robustness to corruptions")
def _augmix(dc: DataConfig) -> T.Compose:
    # AugMix (Hendrycks et al., ICLR 2020) mixes chains of augmentations; it is the standard
    # recipe for ImageNet-C robustness. This is the augmentation alone; ``augmix_jsd`` adds the
    # paper's Jensen-Shannon consistency loss.
    return T.Compose([
        _crop(dc, (0.25, 1.0)), T.RandomHorizontalFlip(), T.AugMix(severity=3, mixture_width=3),
        *_finish(dc),
    ])


class AugMixViews:
    """AugMix's three views of one image for the Jensen-Shannon consistency loss: the (cropped,
    flipped) clean image and two independent AugMix chains of it, stacked ``(3, C, H, W)``."""

    def __init__(self, dc: DataConfig) -> None:
        self.base = T.Compose([_crop(dc, (0.25, 1.0)), T.RandomHorizontalFlip()])
        self.augmix = T.AugMix(severity=3, mixture_width=3)
        self.finish = T.Compose(_finish(dc))

    def __call__(self, img: object) -> torch.Tensor:
        base = self.base(img)
        return torch.stack([self.finish(base), self.finish(self.augmix(base)),
                            self.finish(self.augmix(base))])

    def __repr__(self) -> str:
        return f"AugMixViews({self.base!r}, {self.augmix!r}, {self.finish!r})"


@AUGMENTATIONS.register("augmix_jsd", "AugMix with the Jensen-Shannon consistency loss "
                        "(three views per image: about 3x the compute)")
def _augmix_jsd(dc: DataConfig) -> AugMixViews:
    return AugMixViews(dc)


def eval_view(dc: DataConfig) -> T.Compose:
    """The evaluation geometry only (resize + centre crop, a PIL image out): the picture the model
    sees, for corrupting (ImageNet-C corrupts the crop) or overlaying a heatmap on."""
    resize = int(round(dc.input_size / dc.crop_pct))
    return T.Compose([T.Resize(resize, interpolation=_interp(dc.interpolation), antialias=True),
                      T.CenterCrop(dc.input_size)])


def to_model_input(dc: DataConfig) -> T.Compose:
    """The rest of the evaluation transform after :func:`eval_view`."""
    return T.Compose(_finish(dc))


def train_transform(dc: DataConfig, preset: str) -> T.Compose:
    return AUGMENTATIONS.get(preset)(dc)
