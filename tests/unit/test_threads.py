"""One thread setting for every path that runs a model."""

from __future__ import annotations

import os

import pytest
import torch

from graftkit.errors import ConfigError
from graftkit.threads import ENV, thread_count, use_threads


def test_explicit_then_environment_then_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert thread_count() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(ENV, "1")
    assert thread_count() == 1 and thread_count(3) == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ConfigError, match=f"{ENV}="):
            thread_count()


def test_use_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv(ENV, "1")
    try:
        assert use_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
