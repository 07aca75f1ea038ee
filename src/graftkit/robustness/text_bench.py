"""Run a text classifier over perturbed copies of an evaluation set (the text counterpart of
:func:`graftkit.robustness.bench.run_corruptions`, with the same results structure).

Perturbing text is cheap next to running the encoder, so it happens in this process, batch by
batch, with no worker pool.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bench import check_inputs, decisions, hits, summarize
from .perturbations import perturb, resolve_perturbations

PredictTextProbs = Callable[[list[str]], np.ndarray]


def run_perturbations(predict_probs: PredictTextProbs, texts: Sequence[str], targets: np.ndarray,
                      perturbations: list[str], severities: list[int], seed: int = 0,
                      batch_size: int = 64, progress: Callable[[int], None] | None = None,
                      decide: Callable[[np.ndarray], np.ndarray] | None = None
                      ) -> dict[str, Any]:
    """Accuracy of ``predict_probs`` (texts -> (N, K) probabilities) on clean and perturbed
    copies of ``texts``; ``targets`` holds the N true class indices. ``progress(k)`` is called
    after each batch of k texts; the total is ``n * (1 + cells)``. Returns the dict of
    :func:`graftkit.robustness.bench.summarize` (perturbations under ``corruptions``)."""
    names = resolve_perturbations(",".join(perturbations)) if perturbations else []
    sevs, targets = check_inputs("perturbation", "text", names, perturbations, severities,
                                 len(texts), targets, batch_size)
    n = len(texts)

    def score(batch: list[str], start: int) -> int:
        k = hits(decisions(predict_probs, batch, decide, "texts"),
                 targets[start:start + len(batch)])
        if progress is not None:
            progress(len(batch))
        return k

    texts = [str(t) for t in texts]
    clean = sum(score(texts[s:s + batch_size], s) for s in range(0, n, batch_size))
    correct = {name: dict.fromkeys(sevs, 0) for name in names}
    for name in names:
        for sev in sevs:
            for s in range(0, n, batch_size):
                batch = [perturb(t, name, sev, seed) for t in texts[s:s + batch_size]]
                correct[name][sev] += score(batch, s)
    return summarize(correct, clean, n, sevs, seed)


def examples(texts: Sequence[str], perturbations: list[str], severities: list[int],
             seed: int = 0, k: int = 1) -> list[dict[str, Any]]:
    """``k`` texts as each perturbation leaves them at each severity (for the report):
    ``[{"text", "perturbed": {name: {severity: text}}}]``. The first texts of 6-40 words with
    punctuation and capitals are shown, so that every perturbation has something to change;
    failing those, the first texts."""
    def showy(t: str) -> bool:
        return (6 <= len(t.split()) <= 40 and any(c in string.punctuation for c in t)
                and any(c.isupper() for c in t))

    chosen = ([t for t in texts if showy(t)] + [t for t in texts if not showy(t)])[:k]
    return [{"text": t, "perturbed": {name: {str(s): perturb(t, name, s, seed) for s in severities}
                                      for name in perturbations}}
            for t in chosen]
