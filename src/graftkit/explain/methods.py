"""Attribution methods: why did the model give class ``target`` to this image?

Every method is ``fn(model, x, target) -> heatmap``: ``x`` is one preprocessed image ``(1, 3, H,
W)``, the heatmap is a float32 ``(H, W)`` array in [0, 1] at the input resolution (1 = most
evidence *for* the target). The work is done by maintained libraries, not re-implemented here:

- ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017) and ``gradcam++``: Grad-CAM++ (Chattopadhay
  et al., WACV 2018), from pytorch-grad-cam, on the adapter's ``explain_layer`` (the last
  convolutional feature map). For a ViT/DeiT backbone (timm ``VisionTransformer``) the layer is
  the last block's ``norm1``: its output tokens, less the class/register/distillation tokens
  (``num_prefix_tokens``), are reshaped to the patch grid and used like a feature map (the recipe
  of pytorch-grad-cam's ViT tutorial). Other backbones (token models without a patch grid, NHWC
  feature maps) get a :class:`ConfigError`: use ``integrated-gradients`` or ``occlusion``.
- ``integrated-gradients``: Integrated Gradients (Sundararajan et al., ICML 2017), from Captum,
  from the all-zero input (the dataset mean colour, after normalisation) in 32 Gauss-Legendre
  steps; the map is the positive part of the attribution summed over colour channels.
- ``occlusion``: Occlusion (Zeiler & Fergus, ECCV 2014), from Captum: a mean-coloured square of
  1/7 of the image slid with half-overlap; the map is the drop of the target logit (positive
  part).

Explaining leaves the model as it found it: hooks are removed, ``requires_grad`` and train/eval
mode are restored. Parameters are frozen while explaining (gradients flow to the input only), so
no ``.grad`` is accumulated and frozen backbones (linear probes) explain like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MethodFn = Callable[[nn.Module, torch.Tensor, int], np.ndarray]
METHODS: Registry[MethodFn] = Registry("explanation method")

IG_STEPS = 32
OCCLUSION_FRACTION = 7  # the occluding square is 1/7 of the image side


def explain(model: nn.Module, x: torch.Tensor, target: int, method: str = "gradcam") -> np.ndarray:
    """The ``(H, W)`` heatmap in [0, 1] of ``method`` for class index ``target`` on ``x``."""
    fn = METHODS.get(method)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain takes one image (1, C, H, W); got shape {tuple(x.shape)}")
    return fn(model, x, target)


@contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode with frozen parameters for the duration; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _input(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of ``x`` that gradients flow to, in the channels-last layout that
    graft's models run in (``Run.model`` is channels-last)."""
    return x.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)


def mean_colour(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``x``'s shape that is the data's mean colour, the neutral baseline: zero
    after the preprocessing's normalisation, or the model's own (``mean_colour``: a combination
    of backbones normalises inside its graph, its input is [0, 1] pixels)."""
    own = getattr(model, "mean_colour", None)
    return own(x) if callable(own) else torch.zeros_like(x)


def _unit(a: np.ndarray | torch.Tensor, top: float | None = None) -> np.ndarray:
    """Positive part scaled to [0, 1] by ``top`` (default: the maximum); float32, no NaN."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float32))
    a = np.maximum(a, 0.0)
    top = float(a.max()) if top is None else top
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


def _is_vit(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, a) for a in ("num_prefix_tokens", "patch_embed", "blocks"))


def cam_layer(model: nn.Module, x: torch.Tensor
              ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The layer Grad-CAM reads and how its output becomes a ``(B, C, h, w)`` map."""
    backbone = getattr(model, "backbone", model)
    name = type(backbone).__name__
    if _is_vit(backbone):
        prefix = int(backbone.num_prefix_tokens)
        ph, pw = backbone.patch_embed.patch_size
        gh, gw = x.shape[-2] // ph, x.shape[-1] // pw

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            t = t[:, prefix:, :]
            return t.reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

        return backbone.blocks[-1].norm1, tokens_to_map
    layer = getattr(model, "explain_layer", None)
    if layer is None or getattr(backbone, "output_fmt", "NCHW") != "NCHW":
        raise ConfigError(f"Grad-CAM needs a convolutional feature map or a ViT; {name} has "
                          "neither: use integrated-gradients or occlusion")

    def feature_map(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 4:
            raise ConfigError(f"Grad-CAM needs a (B, C, H, W) feature map; {name}'s explain layer "
                              f"gives {t.ndim}-d output: use integrated-gradients or occlusion")
        return t

    return layer, feature_map


def _cam(method: str, model: nn.Module, x: torch.Tensor, targets: list[int]) -> list[np.ndarray]:
    """One map per image of ``x`` (B, C, H, W), each for its own target class, in one forward
    and one backward pass: in eval mode an image's gradients do not depend on its batch mates.
    ``method`` is a key of :data:`_CAM_KINDS`."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kind = getattr(pytorch_grad_cam, _CAM_KINDS[method])

    layer, reshape = cam_layer(model, x)
    # The layer's output starts the autograd graph: the backward pass stops there instead of
    # running back through the whole backbone to the input (Grad-CAM reads only the layer's
    # gradients). Registered before pytorch-grad-cam's hooks, so theirs see the new output; a
    # clone of the leaf, so that an in-place operation after the layer is still allowed.
    leaf = layer.register_forward_hook(
        lambda _m, _i, out: out.detach().requires_grad_(True).clone() if isinstance(
            out, torch.Tensor) else None)
    with _explaining(model):
        cam = kind(model, [layer], reshape_transform=reshape)
        try:  # not `with cam`: its __exit__ swallows IndexError (a bad target index)
            maps = cam(input_tensor=x.detach().contiguous(memory_format=torch.channels_last),
                       targets=[ClassifierOutputTarget(t) for t in targets])
        finally:
            cam.activations_and_grads.release()
            leaf.remove()
    return [_unit(m) for m in maps]


CAM_BATCH = 16  # images per Grad-CAM pass of explain_batch (activations and gradients held)


def explain_batch(model: nn.Module, x: torch.Tensor, targets: list[int], method: str = "gradcam"
                  ) -> list[np.ndarray]:
    """Heatmaps of several images, ``x`` (B, C, H, W), one target class each: what
    :func:`explain` gives image by image. The Grad-CAM methods run :data:`CAM_BATCH` images per
    pass; the others one image at a time."""
    if len(targets) != len(x):
        raise ValueError(f"{len(x)} images but {len(targets)} targets")
    if method not in _CAM_KINDS:
        return [explain(model, x[i:i + 1], t, method) for i, t in enumerate(targets)]
    return [m for i in range(0, len(x), CAM_BATCH)
            for m in _cam(method, model, x[i:i + CAM_BATCH], targets[i:i + CAM_BATCH])]


# the methods pytorch-grad-cam runs: the name of its class for each
_CAM_KINDS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus"}


@METHODS.register("gradcam", "Grad-CAM on the last feature map (Selvaraju et al. 2017)")
def gradcam(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM: feature maps weighted by their mean gradient, ReLU (pytorch-grad-cam)."""
    return _cam("gradcam", model, x, [target])[0]


@METHODS.register("gradcam++", "Grad-CAM++: pixel-weighted gradients (Chattopadhay et al. 2018)")
def gradcam_pp(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM++: like Grad-CAM with higher-order pixel weights (pytorch-grad-cam)."""
    return _cam("gradcam++", model, x, [target])[0]


@METHODS.register("integrated-gradients",
                  "Integrated Gradients from the mean image (Sundararajan et al. 2017)")
def integrated_gradients(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Integrated Gradients from the zero (mean-colour) baseline (Captum)."""
    from captum.attr import IntegratedGradients

    xin = _input(x)
    with _explaining(model):
        attr = IntegratedGradients(model).attribute(
            xin, baselines=mean_colour(model, xin.detach()), target=target, n_steps=IG_STEPS,
            internal_batch_size=IG_STEPS)
    a = np.maximum(attr[0].detach().sum(0).numpy(), 0.0)
    # Pixel attributions are heavy-tailed: scale by the 99th percentile so the map is visible.
    return _unit(a, float(np.percentile(a, 99)) or None)


@METHODS.register("occlusion", "sliding mean-coloured square (Zeiler & Fergus 2014)")
def occlusion(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Occlusion: the target logit's drop when a square is covered (Captum)."""
    from captum.attr import Occlusion

    c, h, w = x.shape[1:]
    win = max(2, min(h, w) // OCCLUSION_FRACTION)
    stride = max(1, win // 2)
    xin = _input(x)
    with _explaining(model):
        attr = Occlusion(model).attribute(
            xin, sliding_window_shapes=(c, win, win), strides=(c, stride, stride),
            baselines=mean_colour(model, xin.detach()),
            target=target, perturbations_per_eval=32)
    return _unit(attr[0].detach().sum(0).numpy())
