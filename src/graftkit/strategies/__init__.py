"""Fine-tuning strategies, one module each, registered by name in ``STRATEGIES``."""

from . import (  # noqa: F401  (registration)
    full,
    gradual,
    last_n,
    linear_probe,
    lora,
    lp_ft,
    prototype,
)
from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams

__all__ = ["ALL", "STRATEGIES", "Stage", "Strategy", "StrategyParams"]
