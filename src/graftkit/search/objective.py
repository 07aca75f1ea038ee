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
    from ..robustness.evaluate import quick_mca

    return quick_mca(run, corruptions, severities, limit, seed)
