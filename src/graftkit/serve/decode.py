"""A request's inputs -> model inputs, with the memory the server holds bounded.

A full-size decoded image is large (a 5000x5000 PNG of 80 kB is 100 MB as Pillow's RGB) and a
request may carry 64 of them, so nothing is decoded before it is known to fit:

1. **cost**, from the headers only (``Modality.upload_cost``: pixels for images, 0 for texts).
   One input over ``max_pixels``, or all of them over ``max_request_pixels``: 413 before anything
   is decoded; an unreadable header: 400.
2. **grant**: the request's share of the server-wide :class:`~.limits.DecodeBudget`. Its inputs
   decode one after another, so the share is its largest input. A full budget with a full
   waiting room is a 503 at once; time running out while waiting is a 503 too (the app's call).
3. **decode, preprocess, drop**, in a worker thread, one input at a time: decoded (a large JPEG
   at reduced scale, ``Modality.decode_for_model``), its drift statistics and model input
   computed, and the decoded input dropped before the next one. Only ``/v1/explain`` keeps its one
   decoded image (its grant is held until the explanation is done).

The grant is held until the worker thread returns, not until the request gives up: a request
that times out stops its thread at the next input, and its pixels are free once it has.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..errors import BadInput
from ..modalities import Modality
from .limits import Grant, RequestRejected

Items = list[tuple[str, bytes | str]]  # (name, raw bytes or text) of each input


@dataclass
class Prepared:
    name: str
    model_input: Any = None
    stats: dict[str, float] = field(default_factory=dict)
    decoded: Any = None  # kept only when asked for (explain)


class Stopped(Exception):
    """The request gave up (timed out); its worker stops before the next input."""


def _retrieved(fut: asyncio.Future[Any]) -> None:
    # a request that gave up never reads its worker's outcome: asyncio would log it as lost
    if not fut.cancelled():
        fut.exception()


def _rejected(e: BadInput) -> RequestRejected:
    return RequestRejected(413 if e.code == "too_many_pixels" else 400, e.code, e.reason)


@dataclass
class Decoder:
    """Decodes and preprocesses the inputs of one backend's requests under the pixel limits."""

    modality: Modality
    prepare: Callable[[Any], Any]  # the backend's: one decoded input -> its model input
    model_side: Callable[[], int]  # the short side the preprocessing resizes to (0: unknown)
    max_pixels: int
    max_request_pixels: int

    def costs(self, items: Items) -> list[int]:
        """Each input's cost from its header; 400/413 before anything is decoded."""
        costs, side = [], self.model_side()
        for _, raw in items:
            try:
                costs.append(self.modality.upload_cost(raw, self.max_pixels, side))
            except BadInput as e:
                raise _rejected(e) from None
        total = sum(costs)
        if total > self.max_request_pixels:
            noun = self.modality.noun + ("s" if len(items) != 1 else "")
            raise RequestRejected(413, "too_many_request_pixels", (
                f"{len(items)} {noun} of {total} pixels in all are over the limit of "
                f"{self.max_request_pixels} pixels per request; send fewer or smaller "
                f"{self.modality.noun}s per request"))
        return costs

    def _run(self, items: Items, keep: bool, stop: threading.Event) -> list[Prepared]:
        """Worker thread: one input at a time, each dropped once prepared (unless ``keep``)."""
        side, out = self.model_side(), []
        for name, raw in items:
            if stop.is_set():
                raise Stopped
            try:
                x = self.modality.decode_for_model(raw, self.max_pixels, side)
                if keep:
                    out.append(Prepared(name, decoded=x))
                else:
                    out.append(Prepared(name, self.prepare(x), self.modality.input_stats(x)))
                del x  # before the next input is decoded
            except BadInput as e:
                raise _rejected(e) from None
            except MemoryError:
                raise RequestRejected(413, "too_many_pixels", f"{name}: too large to process"
                                      ) from None
        return out

    async def __call__(self, items: Items, grant: Grant, keep: bool = False
                       ) -> list[Prepared]:
        """The prepared inputs; ``keep``: their decoded form instead (the caller closes the
        grant when done with them; otherwise it is released as soon as decoding ends)."""
        costs = await run_in_threadpool(self.costs, items)
        await grant.acquire(max(costs, default=0))
        stop = threading.Event()
        work = grant.track(asyncio.get_running_loop().run_in_executor(
            None, self._run, items, keep, stop))
        work.add_done_callback(_retrieved)
        if not keep:
            grant.close()  # released when the thread is done
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            raise
