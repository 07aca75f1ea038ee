"""Sampling for a study that several workers share: draws seeded per trial, and no config trained
twice.

Every worker builds its sampler from the study's one seed, so a study is reproducible and the
grid sampler's shuffled grid is the same in every worker. Seeded alike and left alone, those
samplers also *drew* alike: two workers asking for trials at the same moment got the same
parameters, and half of a 2-worker search was wasted. ``TrialSeeded`` wraps the sampler and, before
each trial, seeds every random state it holds from (study seed, trial number). Trial N then draws
the same in a serial search run again with the same seed (for TPE: given the same history), and
trials N and N+1 draw differently whichever workers run them. TPE's constant liar (a running
trial counts as a bad one) keeps its model phase apart as well; the grid sampler gives trial N
grid point N, so workers take distinct points.

Chance can still repeat a point of a small categorical space, and two grid points that differ
only in a parameter the trial's strategy does not use (``optim.lr[0]`` on a ``full`` trial) are
one config. ``duplicate_of`` finds the trial that already trains a config; the objective then
does not train it again (see ``study.make_objective``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

# the states of a trial that has trained, or is training, its config: a pruned config is not
# trained again either (training is seeded: it would give the same curve)
TRAINED = ("COMPLETE", "PRUNED")


def derive_seed(*key: int) -> int:
    """A well-mixed 32-bit seed from integers (any sign)."""
    return int(np.random.SeedSequence([k % 2**64 for k in key]).generate_state(1)[0])


def reseed(sampler: Any, key: tuple[int, ...]) -> int:
    """Seed every random state ``sampler`` holds (its own, and those of the samplers it holds,
    e.g. TPE's random sampler for the start-up trials) from ``key``. Returns how many it seeded.
    Optuna keeps no public way to seed a sampler again; its random states are attributes."""
    n = 0
    for i, (name, v) in enumerate(sorted(vars(sampler).items())):
        if isinstance(v, np.random.RandomState):
            v.seed(derive_seed(*key, i))
        elif isinstance(getattr(v, "rng", None), np.random.RandomState):  # LazyRandomState
            v.rng.seed(derive_seed(*key, i))
        elif isinstance(v, np.random.Generator):
            setattr(sampler, name, np.random.default_rng(derive_seed(*key, i)))
        elif isinstance(v, BaseSampler):
            n += reseed(v, (*key, i))
            continue
        else:
            continue
        n += 1
    return n


class TrialSeeded(BaseSampler):
    """``inner``, with its random states seeded from (``seed``, trial number) before each trial."""

    def __init__(self, inner: BaseSampler, seed: int) -> None:
        self.inner, self.seed = inner, seed

    def __str__(self) -> str:
        return str(self.inner)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if not reseed(self.inner, (self.seed, trial.number)):
            # an Optuna that keeps its random state elsewhere: draws stay distinct across
            # workers, not reproducible (tests/unit/test_search_workers.py says so)
            self.inner.reseed_rng()
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def duplicate_of(trials: Iterable[Any], number: int, config: dict[str, Any]) -> int | None:
    """The trial that has trained or is training ``config`` (the overrides trial ``number``
    drew): a complete or pruned one, or a running one with a lower number (of two that drew
    alike at once, the first trains; the second is the duplicate). A failed trial does not count:
    a retry of a trial whose worker died has its parameters on purpose."""
    for t in trials:
        if t.number == number or t.user_attrs.get("config") != config:
            continue
        if t.state.name in TRAINED or (t.state.name == "RUNNING" and t.number < number
                                       and t.user_attrs.get("duplicate_of") is None):
            return int(t.number)
    return None


def duplicates(trials: Iterable[Any]) -> int:
    return sum(t.user_attrs.get("duplicate_of") is not None for t in trials)
