"""Dynamic micro-batching: concurrent requests share one model call.

Each input is queued with a future. One worker task takes the first waiting input, then keeps
collecting until it holds ``max_batch`` inputs or ``max_wait_s`` has passed since the first,
and runs ``run_batch`` on the group in the model's executor (one thread: the model is used by
one batch at a time, and Grad-CAM may share it). While a batch runs, new inputs queue up, so
under load batches fill without waiting at all. ``max_batch=1`` turns batching off.

Inputs whose request gave up (timed out, disconnected) are dropped before the model sees them.
The queue is bounded: when it is full, :meth:`MicroBatcher.submit` raises :class:`Overloaded`
at once instead of letting latency and memory grow without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """The queue is full; the caller should answer 503 and let the client retry."""


@dataclass
class _Item:
    x: Any
    future: asyncio.Future[Any]


class MicroBatcher:
    """Group inputs into batches for ``run_batch(list of inputs) -> list of outputs`` (one output
    per input, in order). ``on_batch(n)`` is called with the size of every batch run."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 1024,
                 executor: concurrent.futures.Executor | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.max_queue, self.on_batch = max_queue, on_batch
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="graft-model")
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_started(self) -> asyncio.Queue[_Item]:
        # Started on first use in the running loop (and again if that loop changed: a test client
        # may run each request in a loop of its own).
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None or \
                self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue(self.max_queue)
            self._worker = loop.create_task(self._work(self._queue), name="graft-batcher")
        return self._queue

    async def start(self) -> None:
        self._ensure_started()

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def submit_nowait(self, inputs: list[Any]) -> list[asyncio.Future[Any]]:
        """Queue ``inputs`` (all or none) and return one future per input."""
        queue = self._ensure_started()
        if queue.qsize() + len(inputs) > self.max_queue:
            raise Overloaded(f"{queue.qsize()} inputs are waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        for x, f in zip(inputs, futures):
            queue.put_nowait(_Item(x, f))
        return futures

    async def submit(self, inputs: list[Any]) -> list[Any]:
        """The outputs of ``inputs``, computed in whatever batches they fall into."""
        return list(await asyncio.gather(*self.submit_nowait(inputs)))

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [it for it in await self._collect(queue) if not it.future.done()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                outputs = await loop.run_in_executor(self.executor, self.run_batch,
                                                     [it.x for it in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(outputs)} outputs for "
                                       f"{len(batch)} inputs")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            for it, out in zip(batch, outputs):
                if not it.future.done():
                    it.future.set_result(out)
