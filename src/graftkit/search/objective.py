"""What a trial is scored by.

``clean`` (default): the run's best validation metric, the one its checkpoint was chosen by.
``robust``: that metric plus ``weight`` x the mean corruption accuracy (mCA) of the finished
model on the validation split, over a small corruption subset at one severity (images: one
corruption per ImageNet-C family, severity 3; texts: every perturbation), so a search can
prefer a model that is nearly as accurate and much more robust. Its scale is [0, 1 + weight]
for accuracy-like metrics; the leaderboard keeps both parts (``clean``, ``mca``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

IMAGE_SUBSET = "gaussian_noise,motion_blur,fog,jpeg_compression"  # noise, blur, weather, digital
TEXT_SUBSET = "all"


def check(objective: str, metric: str, weight: float) -> None:
    from ..evaluate.metrics import LOWER_IS_BETTER

    if objective not in ("clean", "robust"):
        raise ConfigError(f"--objective {objective!r}: choose clean or robust")
    if objective == "robust" and metric in LOWER_IS_BETTER:
        raise ConfigError(f"--objective robust adds accuracy under corruption to {metric!r}, "
                          "which is better lower; use accuracy, macro_f1 or balanced_accuracy")
    if weight < 0:
        raise ConfigError(f"--robust-weight must be >= 0 (got {weight})")


def robust_part(run: Any, corruptions: str | None, severities: str, limit: int | None,
                seed: int = 0) -> dict[str, Any]:
    """mCA of a finished run on its validation split; nothing is written to the run."""
    from ..inference import eval_items
    from ..robustness.corruptions import parse_severities, resolve_corruptions
    from ..robustness.evaluate import _score_images, _score_texts, _subset
    from ..robustness.perturbations import resolve_perturbations

    text = run.meta.get("modality", "image") == "text"
    if text:
        names = resolve_perturbations(corruptions or TEXT_SUBSET)
    else:
        names = resolve_corruptions(corruptions or IMAGE_SUBSET)
    sevs = parse_severities(severities)
    items, _, _, _ = eval_items(run, None, "val")
    items = _subset(items, limit, seed)
    if text:
        results, _ = _score_texts(run, items, names, sevs, seed, lambda *a, **k: None)
    else:
        results, _ = _score_images(run, items, names, sevs, seed, 0, lambda *a, **k: None)
    return {"mca": float(results["mca"]), "clean_accuracy": float(results["clean_accuracy"]),
            "corruptions": names, "severities": sevs, "n": len(items)}
