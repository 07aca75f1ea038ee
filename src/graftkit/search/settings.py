"""A search's settings: what ``search.json`` in the search folder holds, and what a study
carries for workers that join it from another machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SETTINGS = "search.json"


@dataclass
class SearchSettings:
    data: str
    study: str
    metric: str = "accuracy"  # "auto" (the CLI default) is resolved when the study starts
    trials: int = 20
    time_budget_s: float | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    workers: int = 1
    default_trial: bool = True
    heartbeat_s: int = 30
    lr_find: bool = False
    objective: str = "clean"  # or "robust": + robust_weight x mCA (see objective.py)
    robust_weight: float = 0.5
    robust_corruptions: str | None = None
    robust_severities: str = "3"
    robust_limit: int | None = 200
    keep_weights: bool = False  # keep every finished trial's model.safetensors (graft soup)

    @property
    def direction(self) -> str:
        from ..evaluate.metrics import LOWER_IS_BETTER

        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"
