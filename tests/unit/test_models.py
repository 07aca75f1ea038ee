"""Model adapters: built-in weights are really pretrained; local weights load safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from graftkit.data.transforms import eval_transform
from graftkit.errors import ConfigError, GraftError
from graftkit.models.base import ModelAdapter
from graftkit.models.vision import MODELS, _data_config, create_backbone, create_model

skimage_data = pytest.importorskip("skimage.data")

CATS = range(281, 286)  # ImageNet's domestic cats: tabby, tiger, Persian, Siamese, Egyptian
ESPRESSO = 967


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_builtin_weights_are_pretrained_on_imagenet(name: str) -> None:
    backbone, _ = create_backbone(name, pretrained=True)
    backbone.eval()
    tf = eval_transform(_data_config(backbone, name, None))
    x = torch.stack([tf(Image.fromarray(skimage_data.chelsea())),
                     tf(Image.fromarray(skimage_data.coffee()))])
    with torch.no_grad():
        probs = backbone(x).softmax(-1)
    assert int(probs[0].argmax()) in CATS
    assert int(probs[1].argmax()) == ESPRESSO and float(probs[1].max()) > 0.5
    random_init, _ = create_backbone(name, pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(random_init(x), backbone(x))


def test_every_builtin_model_loads() -> None:
    for name in MODELS.names():
        m = create_model(name, 3, pretrained=True)
        assert m.head[1].out_features == 3


def test_adapter_protocol_and_preprocessing_from_the_model() -> None:
    m = create_model("efficientnet_lite0", 5, pretrained=False)
    assert isinstance(m, ModelAdapter)
    dc = m.data_config
    assert (dc.input_size, dc.interpolation, dc.mean) == (224, "bicubic", (0.5, 0.5, 0.5))
    assert m(torch.randn(2, 3, 224, 224)).shape == (2, 5)
    assert m.features(torch.randn(1, 3, 96, 96)).shape == (1, m.num_features)
    assert isinstance(m.explain_layer, torch.nn.Module)
    assert len(m.blocks()) >= 5
    m.reset_head(2)
    assert m.head[1].out_features == 2
    mv2 = create_model("mobilenet_v2", 2, pretrained=False)
    assert mv2.data_config.mean == pytest.approx((0.485, 0.456, 0.406))
    assert mv2.data_config.interpolation == "bilinear"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path: Path, suffix: str) -> None:
    src, _ = create_backbone("test_efficientnet", pretrained=False)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)
    loaded, _ = create_backbone("test_efficientnet", weights=str(path))
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_pickled_code_in_a_pth_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would run code under a plain torch.load
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(GraftError, match="cannot load weights"):
        create_backbone("test_efficientnet", weights=str(path))


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        create_model("resnet9000", 2)


@pytest.mark.parametrize("name, size", [("test_vit", 64), ("vit_tiny_patch16_224", 112)])
def test_a_vit_is_made_for_its_image_size_and_rebuilds_to_the_same(name: str, size: int) -> None:
    """model.image_size sets a ViT's position grid when it is created, as a saved run is
    rebuilt: training runs at that size and the run's weights load back strictly."""
    from graftkit.models.vision import rebuild_model

    torch.manual_seed(0)
    m = create_model(name, 3, pretrained=False, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    again = rebuild_model(name, 3, 0.0, m.data_config)
    again.load_state_dict(m.state_dict(), strict=True)
    assert m.data_config.input_size == size
    assert torch.allclose(again.eval()(x), m(x))


def test_the_mean_colour_baseline_of_a_combination_is_not_black() -> None:
    """Explanations start from the data's mean colour: zero after an ordinary model's
    normalisation, the first part's mean for a combination fed [0, 1] pixels."""
    from graftkit.explain.methods import mean_colour

    x = torch.rand(2, 3, 32, 32)
    single = create_model("test_efficientnet", 2, pretrained=False, image_size=32)
    assert torch.equal(mean_colour(single, x), torch.zeros_like(x))
    both = create_model("test_efficientnet+mobilenetv2_050", 2, pretrained=False)
    want = torch.tensor(both.backbone.configs[0].mean).view(1, 3, 1, 1).expand_as(x)
    assert both.data_config.mean == (0.0, 0.0, 0.0) and torch.allclose(mean_colour(both, x), want)
