"""Images: folders of class folders or CSV manifests of image files, timm backbones, the
ImageNet-C corruptions, Grad-CAM."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.images import (
    IMAGE_EXTENSIONS,
    BadImage,
    decode_image,
    interpolation,
    load_image,
    open_image,
    resize_size,
    upload_pixels,
)
from ..errors import BadInput, ConfigError, DataError
from .base import MODALITIES, ExportSignature, Items, Modality, file_digest

# One corruption per ImageNet-C family at severity 3: WiSE-FT's clean+corruption objective and
# graft search's robust objective (noise, blur, weather, digital).
FAMILY_SUBSET = ("gaussian_noise", "motion_blur", "fog", "jpeg_compression")
# Perceptual hashes this many bits apart (of 64) or fewer are the same picture: a copy re-saved at
# another JPEG quality or resized stays within about 4; unrelated photos are about 32 apart
PHASH_BITS = 8
MAX_INPUT_SAMPLES = 200  # images decoded for the drift reference (spread over the split)
THUMB, STATS_THUMB = 176, 64  # px: a report thumbnail; brightness is measured on a smaller one


def image_stats(img: Image.Image) -> dict[str, float]:
    """Mean brightness (0..1, of the grayscale image) and size of one RGB image."""
    import numpy as np

    # what img.copy().thumbnail(...) makes, without the full-size copy (a served image may be
    # 25 megapixels): the same size and the same reducing resize
    size = _thumb_size(img.size, STATS_THUMB)
    small = img if size == img.size else img.resize(size, Image.Resampling.BICUBIC,
                                                    reducing_gap=2.0)
    gray = np.asarray(small.convert("L"), dtype=np.float32)
    return {"brightness": float(gray.mean() / 255.0), "width": float(img.width),
            "height": float(img.height)}


def _thumb_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size ``Image.thumbnail((side, side))`` gives an image of ``size`` (its rounding)."""
    import math

    w, h = size
    if side >= w and side >= h:
        return size
    aspect, x, y = w / h, side, side

    def nearest(number: float, error: Any) -> int:
        return max(min(math.floor(number), math.ceil(number), key=error), 1)

    if x / y >= aspect:
        return nearest(y * aspect, lambda n: abs(aspect - n / y)), y
    return x, nearest(x / aspect, lambda n: 0 if n == 0 else abs(aspect - x / n))


def _thumbnail(item: str) -> str | None:
    try:
        img = load_image(item)
    except (BadImage, OSError):
        return None
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _recipe(pre: dict[str, Any]) -> str:
    """The evaluation preprocessing in words (bundle.json), as graftkit.export.light does it."""
    size, resize = pre["input_size"], resize_size(pre)
    mean = ", ".join(f"{v:g}" for v in pre["mean"])
    std = ", ".join(f"{v:g}" for v in pre["std"])
    return (f"Decode to RGB (EXIF orientation applied, transparency composited on white). Resize "
            f"the shorter side to {resize} px with {interpolation(pre['interpolation'])} "
            f"interpolation (PIL Image.resize, antialiased; the longer side becomes "
            f"floor({resize} * long / short)). Center-crop {size}x{size} (offset round((side - "
            f"{size}) / 2), half to even). Scale to [0, 1] (divide by 255), subtract the mean "
            f"({mean}) and divide by the std ({std}) per RGB channel. Float32, NCHW.")


def load_or_fail(item: Any) -> tuple[str, Image.Image]:
    try:
        return open_image(item)
    except BadImage as e:
        raise DataError(e.reason) from None


class ImageModality(Modality):
    name, noun, default_model = "image", "image", "efficientnet_lite0"
    json_field, form_field, form_files = "images", "file", True
    json_help = "base64 image files (JPEG, PNG, ...)"
    accept = "image/*"
    explainable = exportable = explains_labels = robust_labels = True
    stat_keys = ("brightness", "width", "height")
    robustness_kind = "corruptions"

    # detect: none needed, image is the default modality (any folder or manifest of files);
    # check_config: none needed, every augmentation, MixUp/CutMix and WiSE-FT objective applies

    def discover(self, d: Any, task: str, progress: Any = None) -> Any:
        from ..data.sources import discover

        return discover(d.path or "", task=task, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, seed=d.split_seed,
                        path_column=d.path_column, label_column=d.label_column,
                        progress=progress)

    def discover_unlabeled(self, path: str, d: Any, progress: Any = None
                           ) -> tuple[list[str], list[dict[str, str]]]:
        from ..data.sources import discover_pool

        return discover_pool(path, path_column=d.path_column, progress=progress)

    weak_view, strong_view = "light", "randaugment"  # FixMatch: flip and crop / RandAugment

    def eval_items(self, data: str | Path, meta: dict[str, Any], d: Any, split: str | None
                   ) -> tuple[Items, list[dict[str, str]], str]:
        from ..data.sources import discover_eval

        return discover_eval(data, meta["classes"], task=meta["task"], split=split,
                             path_column=d.path_column, label_column=d.label_column)

    def expand_inputs(self, inputs: Sequence[str | Path], text_column: str = "text"
                      ) -> list[str]:
        out: list[str] = []
        for item in map(Path, inputs):
            if item.is_dir():
                found = sorted(str(f) for f in item.rglob("*")
                               if f.suffix.lower() in IMAGE_EXTENSIONS)
                if not found:
                    raise DataError(f"{item}: no images in this folder")
                out += found
            else:  # a missing or unreadable file fails when it is read, with the reason
                out.append(str(item))
        if not out:
            raise DataError("no input images given")
        return out

    # --- model --------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        from ..models.vision import resolve_arch

        resolve_arch(name)

    combines = True  # CombinedBackbone: several timm backbones read one image

    def auto_candidates(self) -> list[str]:
        from ..models.vision import AUTO_ORDER

        return list(AUTO_ORDER)

    def model_origin(self, name: str) -> list[str]:
        from ..models.vision import MODELS, parts_of

        return [f"`{p}`: {MODELS.help(p)}" for p in parts_of(name) if p in MODELS]

    def arch(self, name: str) -> str:
        from ..models.vision import resolve_arch

        return resolve_arch(name)

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool,
                     load_backbone: bool = True) -> tuple[Any, dict[str, Any]]:
        from ..models.vision import create_model

        return create_model(m.name or "", n_out, pretrained=m.pretrained and load_backbone,
                            weights=m.weights if load_backbone else None, dropout=m.dropout,
                            image_size=m.image_size), {}

    def rebuild(self, path: Path, meta: dict[str, Any]) -> Any:
        from ..data.transforms import DataConfig
        from ..models.vision import rebuild_model

        dc = DataConfig.from_dict(meta["preprocessing"])
        return rebuild_model(meta["model"]["arch"], meta["num_outputs"],
                             meta["model"]["dropout"], dc, meta["model"].get("parts"))

    def eval_batch(self, d: Any, device: Any) -> int:
        from ..train.device import resolve_eval_batch

        return resolve_eval_batch(d.eval_batch_size, device, d.batch_size)

    def model_view(self, model: Any) -> Any:
        from ..data.transforms import eval_transform

        return eval_transform(model.data_config)  # PIL -> (C, H, W)

    def batch(self, model: Any, prepared: list[Any]) -> Any:
        # NHWC is what oneDNN/cuDNN convolutions run fastest (train.device.resolve_channels_last)
        return torch.stack(prepared).contiguous(memory_format=torch.channels_last)  # (B,C,H,W)

    def tta_views(self, n: int, model: Any, cfg: Any) -> list[Any]:
        from ..data.tta import first, image_views

        flips = cfg.train.augment != "none"  # "none" said: a mirrored input is another input
        return first(image_views(flips), n, "image runs" if flips else
                     "image runs trained with augment: none (no flips)")

    # --- inputs -------------------------------------------------------------------------------
    def load(self, item: Any) -> tuple[str, Any]:
        return load_or_fail(item)

    def decode_upload(self, raw: bytes | str, max_pixels: int) -> Any:
        if isinstance(raw, str):
            raise BadInput("this model takes images, not texts", "bad_request")
        return decode_image(raw, max_pixels)

    def upload_cost(self, raw: bytes | str, max_pixels: int, model_side: int = 0) -> int:
        if isinstance(raw, str):
            raise BadInput("this model takes images, not texts", "bad_request")
        return upload_pixels(raw, max_pixels, model_side)  # from the header

    def decode_for_model(self, raw: bytes | str, max_pixels: int, model_side: int) -> Any:
        if isinstance(raw, str):
            raise BadInput("this model takes images, not texts", "bad_request")
        # A JPEG may decode at 1/2..1/8 scale, keeping twice the short side the preprocessing
        # resizes to: its antialiased resize still does the downscaling, so the model input is
        # all but the same as from the full-size image (only JPEGs >= 4x that side qualify)
        return decode_image(raw, max_pixels, min_side=2 * model_side if model_side > 0 else 0)

    def warmup_input(self, size: int) -> Any:
        return Image.new("RGB", (size, size), (128, 128, 128))

    def input_stats(self, decoded: Any) -> dict[str, float]:
        return image_stats(decoded)

    def _reference_inputs(self, items: Sequence[str]) -> list[Any]:
        images = []
        for item in items[::max(1, len(items) // MAX_INPUT_SAMPLES)]:
            try:
                images.append(load_image(item))
            except BadImage:
                continue  # unreadable images are left out
        return images

    # --- data audit -----------------------------------------------------------------------------
    def content_key(self, item: str) -> str:
        return file_digest(item)

    def near_key(self, item: str) -> Any:
        """The 64-bit perceptual hash (DCT, imagehash.phash) of the image: re-encoded, resized
        and lightly edited copies stay within a few bits of each other."""
        import imagehash

        try:
            return int(str(imagehash.phash(load_image(item))), 16)
        except BadImage:
            return None

    def near_match(self, a: Any, b: Any) -> bool:
        return a is not None and b is not None and bin(a ^ b).count("1") <= PHASH_BITS

    def item_stats(self, item: str) -> dict[str, float]:
        try:
            with Image.open(item) as img:  # the header only
                w, h = img.size
        except (OSError, ValueError, SyntaxError):
            return {}
        return {"width": float(w), "height": float(h), "aspect": w / h if h else 0.0}

    # --- consumers ----------------------------------------------------------------------------
    def robustness_names(self, spec: str | None) -> list[str]:
        from ..robustness.corruptions import resolve_corruptions

        return resolve_corruptions(spec or "all")

    def robust_subset(self) -> str:
        return ",".join(FAMILY_SUBSET)

    def robustness(self, model: Any, cal: Any, items: Items, names: list[str], sevs: list[int],
                   seed: int, batch_size: int, workers: int | None, progress: Any,
                   forward: Any = None) -> tuple[dict[str, Any], Any]:
        """Images are corrupted as the model sees them (after the evaluation resize and centre
        crop, as ImageNet-C corrupts 224 px crops), then normalised."""
        import time

        import numpy as np

        from ..data.transforms import eval_view, to_model_input
        from ..robustness.bench import default_plan, run_corruptions

        view, finish = eval_view(model.data_config), to_model_input(model.data_config)
        images = [view(load_or_fail(path)[1]) for path, _ in items]
        # multi-label: (N, K) 0/1 targets, decided by the run's thresholds (subset accuracy)
        targets = np.array([t for _, t in items]).astype(bool if cal.multilabel else np.int64)

        run = forward or model
        model_s = 0.0

        @torch.no_grad()
        def predict_probs(arrays: list[np.ndarray]) -> np.ndarray:
            nonlocal model_s
            t0 = time.perf_counter()
            # (B, H, W, 3) uint8 -> one batched conversion; the same numbers as per image
            x = finish(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
            x = x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
            probs = cal.probs(run(x)).numpy()
            model_s += time.perf_counter() - t0
            return probs

        turns = False
        if workers is None:
            workers, turns = default_plan()
        t0 = time.perf_counter()
        results = run_corruptions(predict_probs, images, targets, names, sevs, seed=seed,
                                  workers=workers, batch_size=max(batch_size, 16),
                                  progress=progress, decide=cal.decide,
                                  turns=turns, arrays=True)
        # where the time went: the model (with its input conversion), and the rest (corrupting
        # in process, or waiting for the workers)
        results["timing"] = {"model_s": round(model_s, 2),
                             "corrupt_s": round(time.perf_counter() - t0 - model_s, 2),
                             "workers": workers, "turns": turns}
        return results, images[0]

    def robustness_figures(self, shown: Any, names: list[str], sevs: list[int], out: Path,
                           seed: int) -> dict[str, Any]:
        from ..robustness.plots import plot_examples

        plot_examples(shown, names, sevs, out / "examples.png", seed=seed)
        return {}

    def corrupted_sets(self, model: Any, items: Items, task: str, seed: int) -> dict[str, Any]:
        from ..robustness.bench import corrupted_dataset

        return {name: corrupted_dataset(model.data_config, [p for p, _ in items],
                                        [t for _, t in items], task, name, 3, seed)
                for name in FAMILY_SUBSET}

    def explain_methods(self) -> list[str]:
        from ..explain.methods import METHODS

        return METHODS.names()

    def explain(self, run: Any, inputs: list[str | Path], texts: list[str], method: str | None,
                target: str | None, out_dir: Path, topk: int) -> list[dict[str, Any]]:
        from ..explain.images import explain_images

        if texts:
            raise ConfigError(f"--text is for text runs; {str(run.path)!r} is an image run")
        return explain_images(run, self.expand_inputs(inputs), method or "gradcam", target,
                              out_dir, topk)

    def gallery(self, examples: list[dict[str, Any]], model: Any, classes: list[str], cal: Any,
                out: Path) -> list[dict[str, Any]]:
        """Each image's thumbnail and, when the model has a feature map to read, its Grad-CAM
        overlay of the predicted class (computed with ``model``, already in memory)."""
        from ..explain.images import gradcam_overlays

        cams = gradcam_overlays(model, classes, cal, [ex["item"] for ex in examples],
                                out / "gradcam") if model is not None and examples else {}
        return [{**ex, "thumb": _thumbnail(ex["item"]), "label": Path(ex["item"]).name,
                 "cam": _data_uri(cams[ex["item"]]) if ex["item"] in cams else None}
                for ex in examples]

    # --- export -------------------------------------------------------------------------------
    def export_signature(self, model: Any) -> ExportSignature:
        """The adapter itself on one ``image`` tensor, (batch, 3, H, W) with a dynamic batch."""
        size = model.data_config.input_size
        # Batch 2: torch.export specialises a dimension whose example size is 1.
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        spec = {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                "layout": "NCHW", "description": "RGB image preprocessed as in preprocessing"}
        return ExportSignature(model, (x,), [spec], lambda batch: (batch,))

    def export_assets(self, model: Any, run_dir: Path, bundle_dir: Path) -> dict[str, Any]:
        """No files: the preprocessing is numbers (size, crop, mean/std) and the recipe."""
        pre = model.data_config.to_dict()
        size = pre["input_size"]
        return {"kind": "image", **pre, "interpolation_applied": interpolation(
            pre["interpolation"]), "resize_short_side": resize_size(pre), "crop": [size, size],
            "recipe": _recipe(pre)}

    def export_fallback(self, meta: dict[str, Any]) -> tuple[list[Any], str]:
        import numpy as np

        rng = np.random.default_rng(0)
        size = meta["preprocessing"]["input_size"]
        shapes = [(size + 37 * i, size + 23 * (7 - i)) for i in range(8)]
        return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                for h, w in shapes], "random-noise images"

    def card_notes(self, pre: dict[str, Any]) -> dict[str, str]:
        size = pre["input_size"]
        return {
            "backbone": "timm architecture",
            "input": f"{size}x{size} RGB",
            "cut": f"Images are resized so that the shorter side is {pre['resize_short_side']} px "
                   f"and center-cropped to {size}x{size} px: detail finer than that is lost, and "
                   "objects near the edges of elongated images are cut off.",
            "shift": "photos from other cameras, settings, viewpoints or populations",
            "perturbations": "image corruptions (noise, blur, weather, JPEG)",
            "degraded": "blurred, noisy or badly exposed images",
            "example": '["photo.jpg"]',
            "libraries": "Pillow",
        }


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


MODALITIES.register("image", "image files: class folders or a CSV manifest")(ImageModality())

__all__ = ["FAMILY_SUBSET", "ImageModality", "image_stats"]
