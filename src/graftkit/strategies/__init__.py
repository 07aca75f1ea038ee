"""Fine-tuning strategies, one module each, registered by name in ``STRATEGIES``."""

from . import full, gradual, last_n, linear_probe, lora, lp_ft  # noqa: F401  (registration)
from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams

__all__ = ["ALL", "STRATEGIES", "Stage", "Strategy", "StrategyParams"]
