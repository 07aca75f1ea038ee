"""Run a classifier over corrupted copies of an evaluation set, and score it as in ImageNet-C.

Corrupting is the CPU-heavy part. :func:`run_corruptions` farms it out to a pool of worker
processes (``spawn``: safe next to torch's threads) in jobs of one corruption x one chunk of up
to ``batch_size`` images x every severity. Where the model's threads leave cores free, the
workers corrupt on those while the calling process runs the model on finished jobs (at most
``2 * workers`` jobs in flight). Where they leave none (2 threads on 2 cores), workers beside
the model would only compete with its threads, so the two take turns instead: as many workers
as the model has threads corrupt a round of jobs while the model waits, then the model scores
the round while they wait (:func:`default_plan`). Memory stays bounded whatever the number of
images and corruptions. Every image gets its own seed per (corruption, severity), derived from
``seed`` with a stable hash (:func:`cell_seed`), so the results do not depend on the number of
workers or on the order jobs finish in. As with any ``spawn`` pool, a script that calls
:func:`run_corruptions` with workers needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from multiprocessing import get_context
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError, GraftError
from .corruptions import SEVERITIES, corrupt_array, resolve_corruptions

PredictProbs = Callable[[list[Any]], np.ndarray]  # PIL images, or uint8 arrays (arrays=True)


def cell_seed(seed: int, index: int, name: str, severity: int) -> int:
    """The 32-bit seed for image ``index`` under (``name``, ``severity``), stable across runs."""
    key = f"{seed}/{index}/{name}/{severity}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def _corrupt_chunk(images: list[np.ndarray], start: int, name: str, severities: list[int],
                   seed: int) -> list[list[np.ndarray]]:
    """Per severity, the corrupted images ``start, start+1, ...`` (a worker's job)."""
    return [[corrupt_array(img, name, sev, cell_seed(seed, start + i, name, sev))
             for i, img in enumerate(images)] for sev in severities]


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def _corrupted_chunks(arrays: list[np.ndarray], jobs: list[tuple[str, int]], severities: list[int],
                      seed: int, workers: int, chunk: int, meanwhile: Callable[[], None],
                      turns: bool = False,
                      ) -> Iterator[tuple[str, int, list[list[np.ndarray]]]]:
    """Yield (name, start, per-severity corrupted images) for every job, in job order; call
    ``meanwhile()`` once the workers are busy. ``turns``: the workers and the caller take turns
    (a round of ``2 * workers`` jobs corrupted, then handed over while the workers wait)."""
    if workers == 0:
        meanwhile()
        for name, s in jobs:
            yield name, s, _corrupt_chunk(arrays[s:s + chunk], s, name, severities, seed)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        pending: deque[tuple[str, int, Future]] = deque()
        todo = iter(jobs)
        started = False
        try:
            if turns:
                # the workers start (imports) while the caller scores the clean images
                warm = [pool.submit(_init_worker) for _ in range(workers)]
                meanwhile()
                for fut in warm:
                    fut.result()
                for i in range(0, len(jobs), 2 * workers):
                    pending.extend((name, s, pool.submit(
                        _corrupt_chunk, arrays[s:s + chunk], s, name, severities, seed))
                        for name, s in jobs[i:i + 2 * workers])
                    done = [(name, s, fut.result()) for name, s, fut in pending]
                    pending.clear()
                    yield from done
                return
            while True:
                while len(pending) < 2 * workers and (job := next(todo, None)) is not None:
                    name, s = job
                    pending.append((name, s, pool.submit(
                        _corrupt_chunk, arrays[s:s + chunk], s, name, severities, seed)))
                if not started:
                    started = True
                    meanwhile()
                if not pending:
                    return
                name, s, fut = pending.popleft()
                yield name, s, fut.result()
        except BrokenProcessPool:
            raise GraftError(
                "a corrupting worker process died. A script that scores robustness with "
                "workers keeps its calls under `if __name__ == \"__main__\":` (each worker "
                "re-runs the script's top level), or passes workers=0") from None
        finally:
            for *_, fut in pending:
                fut.cancel()


def default_workers() -> int:
    """Corrupting processes beside the model: the cores its threads (the one thread setting)
    leave free. On 2 cores with 2 threads that is none: corrupting between model batches beat
    one or two worker processes competing with the model's threads (hymenoptera, 40 images x 76
    cells: 33 s in process, 35 s with one worker, 44 s with two)."""
    import torch

    return max(0, (os.cpu_count() or 1) - torch.get_num_threads())


def default_plan() -> tuple[int, bool]:
    """(workers, turns) when the caller did not say: the free cores beside the model, or, when
    its threads take every core, as many workers as it has threads taking turns with it (never
    more busy cores than the thread setting); one thread on one core corrupts in process."""
    import torch

    free = default_workers()
    if free:
        return free, False
    threads = torch.get_num_threads()
    return (threads, True) if threads > 1 else (0, False)


def decisions(predict_probs: Callable[[Any], Any], inputs: list[Any],
              decide: Callable[[np.ndarray], np.ndarray] | None = None,
              noun: str = "images") -> np.ndarray:
    """The decisions on a batch of ``inputs``: ``decide`` of their probabilities (the run's own
    rule: a binary run's threshold, a multi-label run's per-label ones), else the argmax."""
    probs = np.asarray(predict_probs(inputs))
    if probs.ndim != 2 or probs.shape[0] != len(inputs):
        raise ValueError(f"predict_probs returned shape {probs.shape} for {len(inputs)} {noun}; "
                         "expected (N, classes)")
    return probs.argmax(axis=1) if decide is None else decide(probs)


def hits(preds: np.ndarray, targets: np.ndarray) -> int:
    """Right decisions: class indices equal, or (multi-label, (N, K) decisions) every label of
    the example right."""
    same = preds == targets
    return int((same.all(axis=1) if same.ndim == 2 else same).sum())


def check_inputs(kind: str, item: str, names: list[str], given: Any, severities: list[int],
                 n: int, targets: Any, batch_size: int) -> tuple[list[int], np.ndarray]:
    """The checks shared by the image and text runners: at least one ``kind`` (corruption,
    perturbation) and severities in 1-5, one target per ``item``, a positive batch size.
    Returns the sorted severities and the targets as an array."""
    sevs = sorted(set(severities))
    if not names or not sevs or any(s not in SEVERITIES for s in sevs):
        raise ConfigError(f"need at least one {kind} and severities in 1-5; got "
                          f"{given!r} and {severities!r}")
    targets = np.asarray(targets)
    if n == 0 or targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"need one target per {item}: {n} {item}s, targets of shape "
                         f"{targets.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return sevs, targets


def run_corruptions(predict_probs: PredictProbs, images: Sequence[Image.Image],
                    targets: np.ndarray, corruptions: list[str], severities: list[int],
                    seed: int = 0, workers: int | None = None, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None,
                    decide: Callable[[np.ndarray], np.ndarray] | None = None,
                    turns: bool = False, arrays: bool = False) -> dict[str, Any]:
    """Accuracy of ``predict_probs`` on clean and corrupted copies of ``images``.

    ``predict_probs`` maps a list of RGB images to an (N, K) array of class probabilities;
    ``targets`` holds the N true class indices. A multi-label run passes ``decide`` (its
    per-label thresholds: probabilities -> (N, K) booleans) and (N, K) 0/1 targets: its
    accuracy is the subset accuracy, every label of an image right. ``arrays``: it takes the
    images as HxWx3 uint8 arrays instead (no PIL image is made). ``workers`` processes
    corrupt the images beside the model, or taking turns with it (``turns``); the default is
    :func:`default_plan`'s; 0 corrupts in this process, between model batches.
    ``progress(k)`` is called after each model batch with the k images just scored; the total
    is ``n * (1 + cells)``.

    Returns a JSON-able dict: ``clean_accuracy``; ``corruptions``: per name, accuracy per
    ``severity`` (keys "1".."5") and their ``mean``; ``mca`` (mean corruption accuracy over all
    cells), ``relative_robustness`` (mca / clean accuracy; NaN when that is 0), ``n``,
    ``severities`` and ``seed``.
    """
    names = resolve_corruptions(",".join(corruptions)) if corruptions else []
    sevs, targets = check_inputs("corruption", "image", names, corruptions, severities,
                                 len(images), targets, batch_size)
    n = len(images)
    if workers is None:
        workers, turns = default_plan()
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")

    rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
    pixels = [np.asarray(im) for im in rgb]  # decoded once, shipped to workers by chunk
    clean = pixels if arrays else rgb

    def scored(preds: np.ndarray, start: int) -> int:
        if progress is not None:
            progress(len(preds))
        return hits(preds, targets[start:start + len(preds)])

    clean_correct = 0

    def score_clean() -> None:
        nonlocal clean_correct
        clean_correct = sum(scored(decisions(predict_probs, clean[s:s + batch_size], decide), s)
                            for s in range(0, n, batch_size))

    correct = {name: dict.fromkeys(sevs, 0) for name in names}
    jobs = [(name, s) for name in names for s in range(0, n, batch_size)]
    chunks = _corrupted_chunks(pixels, jobs, sevs, seed, workers, batch_size, score_clean, turns)
    with closing(chunks):
        for name, start, per_severity in chunks:
            for sev, batch in zip(sevs, per_severity):
                imgs = batch if arrays else [Image.fromarray(a, mode="RGB") for a in batch]
                correct[name][sev] += scored(decisions(predict_probs, imgs, decide), start)

    return summarize(correct, clean_correct, n, sevs, seed)


def summarize(correct: dict[str, dict[int, int]], clean_correct: int, n: int, sevs: list[int],
              seed: int) -> dict[str, Any]:
    """The results dict of :func:`run_corruptions` from counts of correct predictions:
    ``correct[name][severity]`` and ``clean_correct``, out of ``n`` each (text perturbations
    are scored the same way)."""
    per = {name: {"severity": {str(sev): c[sev] / n for sev in sevs}}
           for name, c in correct.items()}
    for entry in per.values():
        entry["mean"] = float(np.mean(list(entry["severity"].values())))
    clean = clean_correct / n
    mca = float(np.mean([acc for e in per.values() for acc in e["severity"].values()]))
    return {
        "clean_accuracy": clean,
        "corruptions": per,
        "mca": mca,
        "relative_robustness": mca / clean if clean > 0 else math.nan,
        "n": n,
        "severities": sevs,
        "seed": seed,
    }


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def corruption_errors(results: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Corruption errors of ``results`` relative to a ``reference`` model's results (both from
    :func:`run_corruptions`), as defined by Hendrycks & Dietterich (2019):

    - ``ce[c]`` = sum_s E(c, s) / sum_s E_ref(c, s), with E = 1 - accuracy; ``mce`` its mean;
    - ``relative_ce[c]`` = sum_s (E(c, s) - E_clean) / sum_s (E_ref(c, s) - E_ref_clean);
      ``relative_mce`` its mean.

    Ratios, not percentages (1.0 = as robust as the reference). Over the severities of
    ``results``, which the reference must cover. A zero denominator (a reference without errors
    on a corruption, or whose corrupted error equals its clean one) gives NaN for that
    corruption, and so for the mean.
    """
    sevs = [str(s) for s in results["severities"]]
    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    clean_err = 1.0 - results["clean_accuracy"]
    ref_clean_err = 1.0 - reference["clean_accuracy"]
    for name, entry in results["corruptions"].items():
        ref_sev = reference["corruptions"].get(name, {}).get("severity", {})
        missing = [s for s in sevs if s not in ref_sev]
        if missing:
            raise ValueError(f"reference results lack {name} at severities {', '.join(missing)}")
        err = [1.0 - entry["severity"][s] for s in sevs]
        ref_err = [1.0 - ref_sev[s] for s in sevs]
        ce[name] = _ratio(sum(err), sum(ref_err))
        rel[name] = _ratio(sum(e - clean_err for e in err),
                           sum(e - ref_clean_err for e in ref_err))
    return {
        "ce": ce,
        "mce": float(np.mean(list(ce.values()))),
        "relative_ce": rel,
        "relative_mce": float(np.mean(list(rel.values()))),
        "severities": [int(s) for s in sevs],
    }


def corrupted_dataset(data_config: Any, paths: Sequence[str], targets: Sequence[float],
                      task: str, name: str, severity: int, seed: int) -> Any:
    """A dataset of ``(input tensor, target)``: each image corrupted once as the model sees it
    (after the evaluation resize and crop), with :func:`cell_seed`'s seeds, then normalised."""
    import torch
    from torch.utils.data import TensorDataset

    from ..data.images import load_image
    from ..data.transforms import eval_view, to_model_input
    from .corruptions import corrupt

    view, finish = eval_view(data_config), to_model_input(data_config)
    x = torch.stack([finish(corrupt(view(load_image(p)), name, severity,
                                    cell_seed(seed, i, name, severity)))
                     for i, p in enumerate(paths)])
    y = torch.tensor([int(t) for t in targets]) if task == "classification" else torch.tensor(
        list(targets), dtype=torch.float32)
    return TensorDataset(x, y)
