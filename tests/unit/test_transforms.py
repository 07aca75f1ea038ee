"""Preprocessing from the model's data config, and every augmentation preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit.data.transforms import AUGMENTATIONS, DataConfig, eval_transform, train_transform

DC = DataConfig(64, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PRESETS = {"none", "light", "standard", "strong", "randaugment", "augmix"}
VIEWS = {"augmix_jsd"}  # presets that give several views per image


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))


def test_every_preset_is_tested() -> None:
    assert set(AUGMENTATIONS.names()) == PRESETS | VIEWS


def test_augmix_jsd_gives_a_clean_and_two_augmented_views() -> None:
    from graftkit.train.step import jensen_shannon

    torch.manual_seed(0)
    x = train_transform(DC, "augmix_jsd")(_photo())
    assert x.shape == (3, 3, 64, 64)
    assert not torch.equal(x[1], x[2]) and not torch.equal(x[0], x[1])
    same = torch.randn(4, 5)
    assert float(jensen_shannon(same, same, same)) == pytest.approx(0.0, abs=1e-6)
    assert float(jensen_shannon(same, -same, same)) > 0.1


def test_eval_transform_resizes_crops_and_normalises() -> None:
    white = Image.new("RGB", (200, 100), (255, 255, 255))
    x = eval_transform(DC)(white)
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.ones_like(x))  # (1-0.5)/0.5
    assert torch.equal(eval_transform(DC)(_photo()), eval_transform(DC)(_photo()))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_give_model_sized_normalised_tensors(preset: str) -> None:
    tf = train_transform(DC, preset)
    torch.manual_seed(0)
    outs = [tf(_photo()) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    assert all(o.min() >= -1.01 and o.max() <= 1.01 for o in outs)
    random = any(not torch.equal(outs[0], o) for o in outs[1:])
    assert random == (preset != "none")
