"""Test-time augmentation: the views each modality offers, the averaging, and the comparison with
the plain model. Real photos for the image views; batches built as the audio modality builds them
for the time shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit.config import Config
from graftkit.data.transforms import DataConfig, eval_transform
from graftkit.data.tta import Averaged, audio_views, first, image_views
from graftkit.errors import ConfigError, GraftError
from graftkit.evaluate.analysis import analyze, compare_tta
from graftkit.modalities import MODALITIES

DC = DataConfig(input_size=64, crop_pct=0.875, interpolation="bilinear",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _photo(hymenoptera: Path) -> torch.Tensor:
    f = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[0]
    return eval_transform(DC)(Image.open(f).convert("RGB"))[None]  # (1, 3, 64, 64)


def test_image_views_of_a_real_photo(hymenoptera: Path) -> None:
    x = _photo(hymenoptera)
    views = dict(image_views())
    assert list(views)[:3] == ["identity", "flip", "zoom centre"] and len(views) == 12
    assert views["identity"](x) is x
    assert torch.equal(views["flip"](x), x.flip(-1))
    for name, view in views.items():
        y = view(x)
        assert y.shape == x.shape and y.dtype == x.dtype, name
        assert name == "identity" or not torch.allclose(y, x), name  # every view differs
    # the centre zoom is the middle of the picture, enlarged: the middle 56 px resized to 64
    mid = torch.nn.functional.interpolate(x[..., 4:60, 4:60], size=(64, 64), mode="bilinear")
    zoom = views["zoom centre"](x)
    assert torch.corrcoef(torch.stack([zoom.flatten(), mid.flatten()]))[0, 1] > 0.9
    assert (zoom - mid).abs().mean() < 0.5 * (x - mid).abs().mean()
    assert torch.allclose(views["zoom top-left + flip"](x), views["zoom top-left"](x).flip(-1))
    no_flips = [n for n, _ in image_views(flips=False)]
    assert no_flips == ["identity", "zoom centre", "zoom top-left", "zoom top-right",
                        "zoom bottom-left", "zoom bottom-right"]


def test_corner_zooms_look_at_their_corner() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[..., :8, :8] = 1.0  # a bright square in the top-left corner
    views = dict(image_views())
    bright = {n: float(v(x).mean()) for n, v in views.items()}
    assert bright["zoom top-left"] > bright["identity"] > bright["zoom bottom-right"]
    assert float(views["zoom top-left"](x)[..., :4, :4].mean()) == 1.0  # the corner stays put


@pytest.mark.parametrize("shape", [(3, 80, 100), (3, 1600)])  # log-mel frames / raw samples
def test_time_shifts_move_the_clip_and_its_length(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g) + 1.0
    length = torch.tensor([shape[-1], 60, 30])
    views = dict(audio_views(steps_per_second=100.0))
    assert list(views) == ["identity", "+50 ms", "-50 ms", "+100 ms", "-100 ms", "+150 ms",
                           "-150 ms"]
    later = views["+50 ms"]({"input": x, "length": length})  # 5 steps later
    y, n = later["input"], later["length"]
    assert n.tolist() == [shape[-1], 65, 35]  # a full window keeps its length
    for b, own in enumerate(length.tolist()):
        assert torch.equal(y[b, ..., 5:5 + own][..., :shape[-1] - 5], x[b, ..., :own][
            ..., :shape[-1] - 5])
        assert torch.all(y[b, ..., :5] == x[b].min())  # silence came in
        assert torch.all(y[b, ..., 5 + own:] == x[b].min())
    earlier = views["-100 ms"]({"input": x, "length": length})
    assert earlier["length"].tolist() == [shape[-1] - 10, 50, 20]
    assert torch.equal(earlier["input"][1, ..., :50], x[1, ..., 10:60])
    zero = dict(audio_views(100.0, silence=0.0))["+50 ms"]({"input": x, "length": length})
    assert torch.all(zero["input"][:, ..., :5] == 0)


def test_asking_for_more_views_than_there_are_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"--tta 13: image runs have 12 test-time views"):
        first(image_views(), 13, "image runs")
    with pytest.raises(ConfigError, match="number of views >= 1"):
        first(image_views(), 0, "image runs")
    cfg = Config()
    text = MODALITIES.get("text")
    assert len(text.tta_views(1, None, cfg)) == 1
    with pytest.raises(GraftError, match="--tta 2: text runs have no test-time views"):
        text.tta_views(2, None, cfg)
    image = MODALITIES.get("image")
    assert len(image.tta_views(12, None, cfg)) == 12
    digits = Config.model_validate({"train": {"augment": "none"}})
    with pytest.raises(ConfigError, match="augment: none .no flips. have 6"):
        image.tta_views(7, None, digits)


def test_averaging_the_logits_keeps_the_plain_outputs() -> None:
    model = torch.nn.Linear(4, 3)
    views = [("identity", lambda x: x), ("double", lambda x: 2 * x), ("neg", lambda x: -x)]
    avg = Averaged(model, views)
    x = torch.randn(5, 4)
    with torch.no_grad():
        got = avg(x)
        expect = (model(x) + model(2 * x) + model(-x)) / 3
    assert torch.allclose(got, expect)
    assert torch.equal(avg.plain[0], model(x).detach())
    assert len(avg.seconds) == 3 and all(s > 0 for s in avg.seconds)
    one = Averaged(model, views[:1])
    with torch.no_grad():
        assert torch.equal(one(x), model(x))


def test_the_comparison_counts_fixed_and_broken_decisions() -> None:
    classes = ["a", "b"]
    y = torch.tensor([0, 0, 1, 1])
    plain = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])  # right, wrong x2
    tta = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])    # fixes 1, breaks 1
    c = compare_tta(analyze(plain, y, "classification", classes),
                    analyze(tta, y, "classification", classes), ["identity", "flip"], [0.5, 0.7])
    assert c["fixed"] == 1 and c["broken"] == 1 and c["views"] == 2
    assert c["without"]["accuracy"] == c["with"]["accuracy"] == 0.5
    assert c["model_seconds_with"] == pytest.approx(1.2)
    assert set(c["with"]) == {"accuracy", "macro_f1", "ece", "log_loss"}
    assert np.isfinite(c["with"]["log_loss"])


def test_the_audio_modality_shifts_in_its_frontend_s_steps() -> None:
    from graftkit.data.audio import AudioDataConfig

    class Model:  # what tta_views reads of an audio adapter
        def __init__(self, frontend: str) -> None:
            self.data_config = AudioDataConfig(window_s=1.0, frontend=frontend)

    audio = MODALITIES.get("audio")
    x = torch.rand(2, 80, 100) + 1.0  # log-mel: 100 frames a second (hop 160 at 16 kHz)
    (_, same), (name, later) = audio.tta_views(2, Model("log_mel"), Config())
    assert name == "+50 ms"
    b = {"input": x, "length": torch.tensor([100, 40])}
    assert same(b) is b
    y = later(b)
    assert torch.equal(y["input"][1, :, 5:45], x[1, :, :40]) and y["length"].tolist() == [100, 45]
    wave = torch.rand(2, 16000) + 1.0  # raw samples: 800 of them are 50 ms
    y = audio.tta_views(2, Model("waveform"), Config())[1][1](
        {"input": wave, "length": torch.tensor([16000, 8000])})
    assert torch.all(y["input"][:, :800] == 0) and torch.equal(y["input"][1, 800:8800],
                                                               wave[1, :8000])
    with pytest.raises(ConfigError, match="audio runs have 7 test-time views"):
        audio.tta_views(8, Model("log_mel"), Config())
