"""Backbone features computed once and cached, for head-only training (linear probe, LP-FT's
first stage). The key covers everything the features depend on: the backbone's weights, the data
(every file's path, size, mtime) and the preprocessing, so a stale cache cannot be hit.

``memory`` keeps them for this process (a search reuses them across trials); ``disk`` also stores
them as safetensors under ``$GRAFT_CACHE_DIR`` (default ``~/.cache/graftkit``)/features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import threads
from ..models.base import cache_root
from .checkpoint import atomic_save
from .checkpoint import weights_digest as weights_digest  # the cache keys are made of it

_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_DISK_OFF: str | None = None  # why the disk cache was turned off (full or unwritable), if it was


def cache_dir() -> Path:
    return cache_root() / "features"


def cache_key(backbone_digest: str, data_fingerprint: str, inputs: str, split: str) -> str:
    raw = f"{backbone_digest}|{data_fingerprint}|{inputs}|{split}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


@torch.no_grad()
def extract(
    features: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
    channels_last: bool = False,
    collate: Callable | None = None,
    sort: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``features`` over ``dataset`` -> ``(feats (N, F) float32, targets (N,))`` in the
    dataset's order. Inputs are image tensors or (text) dicts of token tensors, as ``collate``
    makes them. A dataset with an ``extraction_order()`` (texts: shortest first) is read in that
    order, so that a batch padded to its longest input pads little (``sort=False``: in order),
    and the rows are put back in the dataset's order."""
    order = getattr(dataset, "extraction_order", None) if sort else None
    idx = order() if callable(order) else None
    loader: Iterable[Any]
    if num_workers == 0 and threads.current() > 1:
        loader = _in_threads(dataset, idx, batch_size, collate or default_collate)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate, sampler=idx)
    feats, targets = [], []
    for x, y in loader:
        if isinstance(x, torch.Tensor):  # NHWC only means something for a (B, C, H, W) batch
            x = x.to(device)
            x = x.contiguous(memory_format=torch.channels_last) if (
                channels_last and x.ndim == 4) else x
        else:  # a dict of token tensors
            x = {k: v.to(device) for k, v in x.items()}
        feats.append(features(x).float().cpu())
        targets.append(y)
        if on_batch:
            on_batch(len(y))
    x, y = torch.cat(feats), torch.cat(targets)
    if idx is None:
        return x, y
    back = torch.empty(len(idx), dtype=torch.long)
    back[torch.tensor(idx)] = torch.arange(len(idx))  # row i of the dataset was read at back[i]
    return x[back], y[back]


def _in_threads(dataset: Dataset, idx: list[int] | None, batch_size: int,
                collate: Callable) -> Iterator[Any]:
    """The batches a worker-less DataLoader makes, each batch's items read in as many threads
    as the thread setting (decoding and resizing release the GIL). One batch at a time: these
    threads and the model's never run together. (A transform's own tensor operations, such as
    the normalisation of one image, may still use torch's intra-op threads inside each reader
    for a few milliseconds.)"""
    order = idx if idx is not None else range(len(dataset))  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=threads.current()) as pool:
        for start in range(0, len(order), batch_size):
            yield collate(list(pool.map(dataset.__getitem__, order[start:start + batch_size])))


def has(key: str, mode: str) -> bool:
    """Whether :func:`cached_extract` would find ``key`` without computing."""
    if mode == "off":
        return False
    return key in _MEMORY or (mode == "disk" and not _DISK_OFF
                              and (cache_dir() / f"{key}.safetensors").is_file())


def cached_extract(
    key: str,
    mode: str,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    warn: Callable[[str], None] | None = None,
    lookup: bool = True,
    write: bool = True,
) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """Return the features for ``key`` and where they came from: memory, disk or computed.

    ``lookup=False`` computes even when cached (processes that extract together must all take
    part); ``write=False`` keeps the result out of the disk cache (a worker other than rank 0).
    A cache disk that is full or not writable only turns the disk cache off for this process
    (``warn`` says so once): the features are kept in memory and training goes on."""
    global _DISK_OFF
    if mode == "disk" and _DISK_OFF:
        mode = "memory"
    if lookup and mode != "off" and key in _MEMORY:
        return _MEMORY[key], "memory"
    path = cache_dir() / f"{key}.safetensors"
    if lookup and mode == "disk" and path.is_file():
        try:
            t = load_file(str(path))
            _MEMORY[key] = (t["features"], t["targets"])
            return _MEMORY[key], "disk"
        except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed, not fatal
            path.unlink(missing_ok=True)
    result = compute()
    if mode != "off":
        _MEMORY[key] = result
    if mode == "disk" and write:
        try:
            atomic_save({"features": result[0], "targets": result[1]}, path)
        except OSError as e:
            _DISK_OFF = f"{e.strerror or e} ({cache_dir()})"
            if warn is not None:
                warn(f"feature cache: cannot write to disk: {_DISK_OFF}; the disk cache is off "
                     "for this run (features stay in memory)")
    return result, "computed"
