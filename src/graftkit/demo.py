"""``graft demo``: the whole main job on an embedded default, no network and no user files.

scikit-learn's bundled handwritten digits (1797 8x8 grayscale images, 10 classes) are written once
as PNG files in a class-folder tree under the cache directory, then the ordinary pipeline runs on
them: audit, stratified split, the built-in efficientnet_lite0, LP-FT, metrics, predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEMO_OVERRIDES = {
    "strategy.name": "lp_ft",
    # 96 px keeps LP-FT within the demo's budget on 2 CPU cores (about a minute); digits are 8x8,
    # so a larger input only repeats pixels. Digits are far from ImageNet photos, so the
    # fine-tuning stage gets a larger learning rate than lp_ft's default, and no augmentation
    # (a flipped or cropped digit is another digit, or none).
    "model.image_size": 96,
    "train.epochs": 6,
    "optim.lr": 3e-4,
    "train.augment": "none",
    "data.val_fraction": 0.2,
    "data.test_fraction": 0.2,
}


def digits_folder(root: Path | None = None) -> Path:
    """Write sklearn's digits as ``<root>/<digit>/<index>.png`` (once) and return ``root``."""
    from sklearn.datasets import load_digits

    from .models.base import cache_root

    root = root or cache_root() / "demo" / "digits"
    done = root / ".complete"
    if done.is_file():
        return root
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        arr = (img * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
        Image.fromarray(255 - arr, "L").resize((32, 32), Image.NEAREST).save(d / f"{i:04d}.png")
    done.touch()
    return root


def run_demo(out: Path, quiet: bool = False) -> None:
    from . import run as rd
    from .api import finetune
    from .train.progress import console

    data = digits_folder()
    console.print(f"[bold]graft demo[/]: built-in efficientnet_lite0 on scikit-learn digits "
                  f"({data})")
    run = finetune(data=data, out=out, overrides=dict(DEMO_OVERRIDES), overwrite=True, quiet=quiet)
    metrics = run.metrics
    test = metrics.get("test", metrics["val"])
    samples = sorted((data / "3").glob("*.png"))[:1] + sorted((data / "7").glob("*.png"))[:1]
    for r in run.predict(samples, topk=3):
        tops = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in r["top"])
        console.print(f"  predict {Path(r['input']).parent.name}/{Path(r['input']).name}: {tops}")
    console.print(f"[bold]test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}[/] "
                  f"(n={test['n']}); run directory: {run.path}")
    split = "test" if "test" in metrics else "val"
    console.print(f"open the report: {rd.eval_dir(run.path, data, split) / 'report.html'}")
    console.print(f"next: graft predict {run.path} IMAGE  |  graft evaluate {run.path} --data DIR")
