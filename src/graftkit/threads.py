"""One thread setting for every path that runs a model (train, predict, evaluate, explain,
robustness, serve, export): an explicit value (``train.threads``, ``graft --threads N``), else
``$GRAFT_THREADS``, else the cores this process may use. torch's own default ignores CPU
affinity and, beside another heavy job, oversubscribes the cores and runs many times slower."""

from __future__ import annotations

import os

ENV = "GRAFT_THREADS"


def thread_count(n: int | None = None) -> int:
    if n:
        return int(n)
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            if int(value) >= 1:
                return int(value)
        except ValueError:
            pass
        from .errors import ConfigError

        raise ConfigError(f"{ENV}={value!r}: give a whole number of threads, 1 or more")
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def current() -> int:
    """The thread setting in force: torch's where a command has set it (:func:`use_threads`),
    else :func:`thread_count` (for work that runs no model, such as decoding files to audit
    them: it takes no more cores than the model would)."""
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else thread_count()


def use_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`thread_count` and return it."""
    import torch

    k = thread_count(n)
    if torch.get_num_threads() != k:
        torch.set_num_threads(k)
    return k
