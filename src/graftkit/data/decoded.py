"""Decode once: what the data check decoded, kept for the first reader.

Discovery decodes every file to find the unreadable ones (in as many threads as the thread
setting); the first pass over the data (feature extraction, or a fine-tuning run's first epoch)
would decode them again. So the check keeps what it decoded, within a memory bound, and the first
reader of a file takes it (``take`` removes it: the reader owns the object and may change it, and
the memory goes back as the pass goes on). A file is the same file only while its path, size and
modification time are: one changed in between is decoded again.

The bound is ``$GRAFT_DECODED_MB`` (default: 1 GiB, at most an eighth of the machine's memory; 0
turns this off), shared by the processes of a distributed run on one machine. Past it nothing
more is kept, so a data set larger than the bound keeps its first files and decodes the rest
twice, as it did before. :func:`clear` drops what no reader took (a run whose features came from
the cache reads no file) and returns the counts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

ENV = "GRAFT_DECODED_MB"
Key = tuple[Any, ...]

_kept: dict[Key, tuple[Any, int]] = {}
_used = 0
_lock = threading.Lock()
_counts = {"kept": 0, "taken": 0, "past_bound": 0}  # since the last clear()
_sharing = 1  # processes of this machine that keep their own (distributed training)


def key(path: str | os.PathLike, st: os.stat_result, *how: Any) -> Key:
    """A file as it is now (path, size, modification time), and ``how`` it was decoded (a sound
    file's sample rate)."""
    return (os.fspath(path), st.st_size, st.st_mtime_ns, *how)


def share(processes: int) -> None:
    """``processes`` local processes each keep their own decoded files: each gets that share of
    the bound."""
    global _sharing
    _sharing = max(1, int(processes))


def limit() -> int:
    """Bytes that may be kept (by this process)."""
    return _bound() // _sharing


def _bound() -> int:
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            mb = float(value)
        except ValueError:
            mb = -1.0
        if mb < 0:
            raise ConfigError(f"{ENV}={value!r}: give the megabytes of decoded files to keep "
                              "for the first pass (0 keeps none)")
        return int(mb * 2**20)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        memory = 8 * 2**30
    return min(2**30, memory // 8)


def keep(k: Key, obj: Any, nbytes: int) -> bool:
    """Keep ``obj`` (``nbytes`` of memory) for the first reader of ``k``, if it fits."""
    global _used
    with _lock:
        if k in _kept:
            return False
        if _used + nbytes > limit():
            _counts["past_bound"] += 1
            return False
        _kept[k] = (obj, nbytes)
        _used += nbytes
        _counts["kept"] += 1
        return True


def take(k: Key) -> Any | None:
    """What the check kept of ``k`` (then no longer kept), or None."""
    global _used
    with _lock:
        found = _kept.pop(k, None)
        if found is None:
            return None
        _used -= found[1]
        _counts["taken"] += 1
        return found[0]


def read(k: Key, keep_it: bool, decode: Callable[[], T], nbytes: Callable[[T], int]) -> T:
    """A reader's decode of the file ``k``: the kept copy if the check left one, else
    ``decode()``; with ``keep_it`` (the check's own decode) always decoded, and kept for the
    first reader."""
    if not keep_it:
        found = take(k)
        if found is not None:
            return found
    obj = decode()
    if keep_it:
        keep(k, obj, nbytes(obj))
    return obj


def kept() -> tuple[int, int]:
    """(files, bytes) kept now."""
    with _lock:
        return len(_kept), _used


def clear() -> dict[str, int]:
    """Drop what no reader took; return what happened since the last clear: files ``kept`` by
    the check, ``taken`` by a reader of this process (decoded once; DataLoader worker processes
    take from their own copy, uncounted), and ``past_bound`` (not kept: decoded twice)."""
    global _used
    with _lock:
        _kept.clear()
        _used = 0
        done = dict(_counts)
        _counts.update(kept=0, taken=0, past_bound=0)
        return done
