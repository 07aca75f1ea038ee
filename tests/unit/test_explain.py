"""Explanations: every method's contract, the sanity checks of Adebayo et al. ("Sanity Checks for
Saliency Maps", NeurIPS 2018), faithfulness scores, overlays and explain_run's files and errors.

The CNN is timm's tiny ``test_efficientnet`` at 128 px (a 4 x 4 last feature map), trained to fit
16 real hymenoptera photos so that its maps mean something; built once per module.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from graftkit import run as rd
from graftkit.data.images import load_image
from graftkit.data.transforms import DataConfig, eval_transform
from graftkit.errors import ConfigError, DataError, GraftError
from graftkit.explain import (
    METHODS,
    cli_explain,
    explain,
    explain_run,
    faithfulness,
    gradcam_overlays,
    model_view,
    overlay,
)
from graftkit.explain.methods import cam_layer, explain_batch
from graftkit.inference import LoadedRun
from graftkit.models.vision import TimmAdapter, create_model
from graftkit.train.checkpoint import save_weights
from tests.conftest import shared_dataset

IMG = 128
CLASSES = ["ants", "bees"]


def _photos(n: int) -> list[tuple[Path, int]]:
    data = shared_dataset("hymenoptera_256")
    return [(f, y) for y, c in enumerate(CLASSES)
            for f in sorted((data / "train" / c).glob("*.jpg"))[:n]]


@pytest.fixture(scope="module")
def photos() -> list[tuple[Path, int]]:
    return _photos(8)


@pytest.fixture(scope="module")
def cnn(photos: list[tuple[Path, int]]) -> TimmAdapter:
    """test_efficientnet fitted to the photos, in eval mode and channels-last like Run.model."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 2, pretrained=False, image_size=IMG)
    tf = eval_transform(model.data_config)
    x = torch.stack([tf(load_image(f)) for f, _ in photos])
    y = torch.tensor([c for _, c in photos])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() >= 0.9  # it learned the photos
    return model.to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def inputs(cnn: TimmAdapter, photos: list[tuple[Path, int]]) -> list[tuple[torch.Tensor, int]]:
    tf = eval_transform(cnn.data_config)
    return [(tf(load_image(f))[None], y) for f, y in photos[::4]]


@pytest.fixture(scope="module")
def vit() -> TimmAdapter:
    """A tiny randomly initialised ViT at 64 px (graft's create_model builds ViTs at 224 only)."""
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64,
                                 num_classes=0)
    dc = DataConfig(64, 0.9, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return TimmAdapter(backbone, 2, 0.0, dc).eval()


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; 0 when one is constant (it carries no ranking)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


# --- (c) + (e): every method's contract ------------------------------------------------------

@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_gives_a_deterministic_unit_map(cnn, inputs, method):
    x, y = inputs[0]
    a, b = explain(cnn, x, y, method), explain(cnn, x, y, method)
    assert a.shape == (IMG, IMG) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert a.max() == 1  # something was attributed
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_on_a_vit_uses_the_patch_grid(vit, method):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layer, reshape = cam_layer(vit, x)
    assert layer is vit.backbone.blocks[-1].norm1
    tokens = torch.randn(1, 1 + 16, vit.num_features)  # class token + 4 x 4 patches
    assert reshape(tokens).shape == (1, vit.num_features, 4, 4)
    heat = explain(vit, x, 1, method)
    assert heat.shape == (64, 64) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1


def test_input_methods_run_on_a_vit(vit):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for method in ("integrated-gradients", "occlusion"):
        heat = explain(vit, x, 0, method)
        assert heat.shape == (64, 64) and np.isfinite(heat).all()


# --- (d): the model is left as it was ----------------------------------------------------------

@pytest.mark.parametrize("method", METHODS.names())
def test_hooks_grads_and_flags_are_restored(cnn, inputs, method):
    model = copy.deepcopy(cnn)
    for p in model.backbone.parameters():  # a linear probe: frozen backbone, trainable head
        p.requires_grad_(False)
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    before = _hooks(model)
    x, y = inputs[1]
    heat = explain(model, x, y, method)
    assert heat.max() == 1  # gradients reached the input through the frozen layers
    assert _hooks(model) == before == 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and x.grad is None and not x.requires_grad


def test_hooks_are_removed_when_explaining_fails(cnn, inputs):
    x, _ = inputs[0]
    with pytest.raises(IndexError):
        explain(cnn, x, 5, "gradcam")  # no class 5: pytorch-grad-cam's `with` would swallow it
    assert _hooks(cnn) == 0
    assert all(p.requires_grad for p in cnn.parameters())


# --- (a) + (b): Adebayo et al. sanity checks ---------------------------------------------------

def test_cascading_randomization_destroys_the_map(cnn, inputs):
    """Re-initialise the head, then the backbone from the top block down; a map that explains
    the model must change (Spearman of original vs randomised) well below its self-agreement."""
    original = [explain(cnn, x, y) for x, y in inputs]
    assert np.mean([_rho(m, explain(cnn, x, y)) for m, (x, y) in zip(original, inputs)]
                   ) == pytest.approx(1.0)
    model = copy.deepcopy(cnn)
    bb = model.backbone
    cascade = [model.head, nn.ModuleList([bb.conv_head, bb.bn2]), *bb.blocks[::-1]]
    torch.manual_seed(1)
    rhos = []
    for module in cascade:
        _reinit(module)
        rhos.append(np.mean([_rho(m, explain(model, x, y))
                             for m, (x, y) in zip(original, inputs)]))
    # Measured: head 0.20, +conv_head/bn2 0.31, then -0.03 .. 0.28 down the blocks (self: 1.0).
    assert max(rhos) < 0.6


def test_the_target_class_changes_the_map(cnn, inputs):
    """For a model that learned the classes, 'why ants' and 'why bees' differ: measured mean
    Spearman -0.17 (the other class's map is often all zero: no positive evidence), mean absolute
    difference 0.38 to 0.63."""
    pairs = [(explain(cnn, x, y), explain(cnn, x, 1 - y)) for x, y in inputs]
    assert np.mean([_rho(a, b) for a, b in pairs]) < 0.2
    assert min(np.abs(a - b).mean() for a, b in pairs) > 0.2


# --- faithfulness ------------------------------------------------------------------------------

class _Corner(nn.Module):
    """Class 1's logit is the contrast (mean square) of the top-left quarter: the true
    explanation is known, and both deleting (to 0) and blurring lower it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        s = 4 * (x[:, :, :h, :w] ** 2 - 1).mean((1, 2, 3))
        return torch.stack([-s, s], 1)


def test_faithfulness_rewards_the_true_explanation():
    x = 2.0 * ((torch.arange(32)[:, None] + torch.arange(32)) % 2).expand(1, 3, 32, 32).float()
    right = np.zeros((32, 32), np.float32)
    right[:16, :16] = 1
    good = faithfulness(_Corner(), x, right, 1)
    bad = faithfulness(_Corner(), x, 1 - right, 1)
    assert good["beats_random"] and not bad["beats_random"]
    assert good["deletion_auc"] < good["deletion_auc_random"] < bad["deletion_auc"]
    assert good["insertion_auc"] > good["insertion_auc_random"] > bad["insertion_auc"]
    assert faithfulness(_Corner(), x, right, 1) == good  # seeded
    pixels = faithfulness(_Corner(), x, right, 1, random_grid=None)
    assert pixels["random"] == "pixels" and pixels["deletion_auc"] == good["deletion_auc"]
    with pytest.raises(ValueError, match="does not match"):
        faithfulness(_Corner(), x, right[:8], 1)


# --- overlays ----------------------------------------------------------------------------------

def test_model_view_is_what_the_model_sees(cnn, photos):
    image = load_image(photos[0][0])
    view = model_view(image, cnn.data_config)
    assert view.size == (IMG, IMG)
    dc = cnn.data_config
    seen = eval_transform(dc)(image)
    mine = (torch.from_numpy(np.asarray(view, np.float32) / 255).permute(2, 0, 1)
            - torch.tensor(dc.mean)[:, None, None]) / torch.tensor(dc.std)[:, None, None]
    torch.testing.assert_close(mine, seen, atol=1e-5, rtol=0)


def test_overlay_blends_the_heatmap_and_adds_a_caption():
    image = Image.new("RGB", (40, 40), (128, 128, 128))
    heat = np.zeros((40, 40), np.float32)
    heat[:20] = 1
    out = overlay(image, heat, "bees", 0.91, method="gradcam", target="bees")
    assert out.size[0] == 40 and out.size[1] > 40
    px = np.asarray(out, np.int32)
    assert px[5, 5, 0] > px[5, 5, 2]  # hot = red in jet
    assert px[35, 5, 2] > px[35, 5, 0]  # cold = blue
    assert px[41:, :].std() > 0  # the caption was drawn
    assert overlay(image.resize((80, 80)), heat, "bees", 0.91).size == out.size


# --- explain_run: files, records and (f) errors ------------------------------------------------

def _fake_run(tmp: Path, model: TimmAdapter, **meta: object) -> Path:
    """A run directory holding ``model``, as training would leave it."""
    out = tmp / "run"
    out.mkdir(parents=True)
    save_weights(model, out / rd.WEIGHTS)
    rd.write_json(out / rd.META, {
        "task": "classification", "classes": CLASSES, "num_outputs": 2, "status": "completed",
        "strategy": "full", "preprocessing": model.data_config.to_dict(),
        "model": {"name": "test_efficientnet", "arch": "test_efficientnet", "dropout": 0.0},
        "calibration": {"temperature": 2.0}, **meta})
    return out


def test_explain_run_writes_overlays_and_records(cnn, photos, tmp_path, capsys):
    run = _fake_run(tmp_path, cnn)
    files = [str(photos[0][0]), str(photos[-1][0])]
    records = explain_run(run, files, "gradcam", out_dir=tmp_path / "out", topk=5)
    assert len(records) == 2
    for f, r in zip(files, records):
        stem = Path(f).stem
        png, js = tmp_path / "out" / f"{stem}.gradcam.png", tmp_path / "out" / f"{stem}.json"
        assert Image.open(png).size[0] == IMG
        assert json.loads(js.read_text()) == r
        assert r["input"] == f and r["method"] == "gradcam" and r["overlay"] == str(png)
        assert r["target"] == r["predicted"] and r["target_prob"] == r["prob"]
        assert [t["label"] for t in r["top"]][0] == r["predicted"] and len(r["top"]) == 2
        assert sum(t["prob"] for t in r["top"]) == pytest.approx(1.0)
        assert set(r["faithfulness"]) >= {"deletion_auc", "deletion_auc_random", "insertion_auc",
                                          "insertion_auc_random", "beats_random"}
    # Probabilities are the run's calibrated ones (temperature 2).
    x = eval_transform(cnn.data_config)(load_image(files[0]))[None]
    with torch.no_grad():
        p = (cnn(x) / 2).softmax(-1)[0]
    assert records[0]["prob"] == pytest.approx(float(p.max()), abs=1e-5)

    chosen = explain_run(run, files[:1], "occlusion", target="bees", out_dir=tmp_path / "o2")
    assert chosen[0]["target"] == "bees" and (tmp_path / "o2" / f"{Path(files[0]).stem}"
                                               ".occlusion.png").is_file()

    cli_explain(run, files[:1], "gradcam", None, tmp_path / "o3", 2)
    line, summary = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(str(tmp_path / "o3" / f"{Path(files[0]).stem}.gradcam.png"))
    assert "predicted:" in line and "deletion AUC" in line and "random" in line
    assert summary.startswith("1 image(s) explained")


def test_gradcam_overlays_for_the_report(cnn, photos, tmp_path):
    run = _fake_run(tmp_path, cnn)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    items = [str(photos[0][0]), str(bad), str(photos[-1][0])]
    loaded = LoadedRun(run)
    out = gradcam_overlays(loaded.model, loaded.classes, loaded.calibration, items,
                           tmp_path / "cams")
    assert list(out) == [items[0], items[2]]  # the unreadable one is left out
    assert all(p.is_file() and p.suffix == ".png" for p in out.values())


def test_explain_run_errors(cnn, photos, tmp_path):
    run = _fake_run(tmp_path, cnn)
    good = [str(photos[0][0])]
    with pytest.raises(GraftError, match="unknown class 'wasps'.*ants, bees"):
        explain_run(run, good, target="wasps", out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown explanation method 'lime'.*gradcam"):
        explain_run(run, good, "lime", out_dir=tmp_path / "o")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not an image"):
        explain_run(run, [*good, str(bad)], out_dir=tmp_path / "o")
    with pytest.raises(DataError, match="missing.jpg: cannot read"):
        explain_run(run, [str(tmp_path / "missing.jpg")], out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written before the inputs were checked
    with pytest.raises(GraftError, match="--text is for text runs"):
        explain_run(run, good, texts=["a text"], out_dir=tmp_path / "o")
    for key, value, message in (("task", "regression", "classification runs"),
                                ("modality", "text", "not a .txt or .csv file; a text run")):
        other = _fake_run(tmp_path / key, cnn, **{key: value})
        with pytest.raises(GraftError, match=message):
            explain_run(other, good, out_dir=tmp_path / "o")


class _Tokens(nn.Module):
    """A model whose explain layer gives tokens (B, N, C), with no patch grid to map them to."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    @property
    def explain_layer(self) -> nn.Module:
        return self.mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)[..., :1].expand(-1, -1, 8)  # (B, HW, 8)
        return self.head(self.mix(tokens).mean(1))


def test_cam_methods_refuse_models_without_a_feature_map():
    x = torch.randn(1, 3, 8, 8)
    for model in (_Tokens(), nn.Sequential(nn.Flatten(), nn.Linear(192, 2))):
        with pytest.raises(ConfigError, match="use integrated-gradients or occlusion"):
            explain(model, x, 0, "gradcam")
        assert _hooks(model) == 0
        assert explain(model, x, 0, "occlusion").shape == (8, 8)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
def test_explain_batch_gives_each_image_its_own_map(cnn, inputs, method):
    x = torch.cat([xi for xi, _ in inputs])
    targets = [y for _, y in inputs]  # both classes: each image is explained for its own
    assert len(set(targets)) == 2
    maps = explain_batch(cnn, x, targets, method)
    assert len(maps) == len(inputs)
    for xi, t, m in zip(x, targets, maps):
        alone = explain(cnn, xi[None], t, method)
        assert m.shape == alone.shape and m.dtype == np.float32
        np.testing.assert_allclose(m, alone, atol=1e-4)
    assert all(m.max() > 0 for m in maps) and not np.allclose(maps[0], maps[1])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        explain_batch(cnn, x[:2], targets[:1], method)


def test_gradcam_stops_the_backward_pass_at_its_layer_with_the_same_map(cnn, inputs):
    """The backward pass ends at the explained layer; the map is pytorch-grad-cam's own, whose
    backward runs through the whole backbone to an input that needs a gradient."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, y = inputs[0]
    layer, reshape = cam_layer(cnn, x)
    for p in cnn.parameters():
        p.requires_grad_(False)
    try:
        cam = GradCAM(cnn, [layer], reshape_transform=reshape)
        full = cam(input_tensor=x.clone().requires_grad_(True),
                   targets=[ClassifierOutputTarget(y)])[0]
        cam.activations_and_grads.release()
    finally:
        for p in cnn.parameters():
            p.requires_grad_(True)
    graph_at_stem = []
    hook = cnn.backbone.conv_stem.register_forward_hook(
        lambda _m, _i, out: graph_at_stem.append(out.requires_grad))
    try:
        ours = explain(cnn, x, y, "gradcam")
    finally:
        hook.remove()
    assert graph_at_stem == [False]  # no autograd graph below the explained layer
    assert full.max() > 0
    np.testing.assert_allclose(ours, full / full.max(), atol=1e-5)
    assert all(p.requires_grad for p in cnn.parameters())  # left as it was found
    assert not layer._forward_hooks  # the leaf hook is removed


class _InPlaceAfterLayer(nn.Module):
    """A CNN whose explained feature map is followed by an in-place activation."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 2)

    @property
    def explain_layer(self) -> nn.Module:
        return self.backbone[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.backbone(x)).mean((2, 3)))


def test_gradcam_allows_an_in_place_operation_after_its_layer():
    torch.manual_seed(0)
    model, x = _InPlaceAfterLayer().eval(), torch.randn(2, 3, 8, 8)
    maps = explain_batch(model, x, [0, 1], "gradcam")
    assert [m.shape for m in maps] == [(8, 8), (8, 8)]
    assert _hooks(model) == 0
