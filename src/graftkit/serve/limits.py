"""Input limits of the server: request body size (counted on the stream), image pixels, and
the pixels decoded at once.

- :class:`BodyLimit` is a plain ASGI middleware. It refuses a declared ``Content-Length`` over the
  limit before reading anything, and counts the bytes of every body chunk it passes on, so a
  chunked upload (no length declared) is cut off as soon as it goes over: memory stays bounded by
  the limit whatever the client claims.
- :func:`decode_image` reads only the image header first and refuses more pixels than allowed
  before Pillow decodes anything (a decompression bomb: a small PNG of a huge blank image), then
  decodes exactly as ``graftkit.data.images.load_image`` does for files (EXIF rotation, RGB).
  Only common raster formats are opened: no PostScript (Ghostscript), no plugins beyond them.

- :class:`DecodeBudget` bounds the pixels being decoded at once across the server: a request
  waits for its share in arrival order, and is refused with 503 when as many pixels again are
  already waiting (or when its time runs out while it waits).

All raise :class:`RequestRejected`, which the app turns into a JSON error with its status.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image

from ..data import images

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_PIXELS = 25_000_000  # a 24-megapixel photo fits; ~100 MB decoded as RGB
# All the inputs of one request together: 16 photos of 12 megapixels, or 8 at the image limit
DEFAULT_MAX_REQUEST_PIXELS = 200_000_000
# Server-wide, decoded at once: two images at the limit (Pillow holds RGB in 4 bytes a pixel, so
# ~200 MB; more for transient conversions); thousands of small ones
DEFAULT_MAX_DECODE_PIXELS = 50_000_000


class RequestRejected(Exception):
    """A client mistake: ``status`` (4xx), a short machine-readable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> bytes:
    import json

    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON error response, written straight to the ASGI ``send``."""
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(RequestRejected):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body over the limit of {limit} bytes "
                         f"({limit / 1e6:g} MB)")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, counting what is really received.

    ``on_reject(code)`` is called for each refusal (the app counts errors by kind).
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await self._reject(send, 400, "bad_request", "invalid Content-Length header")
                return
            if too_big:
                await self._reject(send, 413, "body_too_large", str(BodyTooLarge(limit)))
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as e:  # raised while the app was reading the body
            if started:
                raise
            await self._reject(send, e.status, e.code, e.message)

    async def _reject(self, send: Send, status: int, code: str, message: str) -> None:
        if self.on_reject is not None:
            self.on_reject(code)
        await send_error(send, status, code, message)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of an image file -> an RGB PIL image, or :class:`RequestRejected` (400 for a corrupt
    or unsupported file, 413 for more than ``max_pixels`` pixels, checked on the header)."""
    try:
        return images.decode_image(data, max_pixels)
    except images.BadImage as e:  # the server's status for each kind of bad image
        raise RequestRejected(413 if e.code == "too_many_pixels" else 400, e.code, e.reason
                              ) from None


class DecodeBudget:
    """At most ``capacity`` pixels decoded at once, server-wide (one event loop; no locks).

    A request takes a :meth:`grant` and acquires its pixels; it decodes when they fit, in arrival
    order (a large image is not starved by small ones). While the budget is full, requests wait,
    up to ``capacity`` pixels of them; a request that finds the waiting room full too is refused
    at once with 503 (retry shortly), so an overload sheds load instead of queueing work that
    would time out. A request asking for more than ``capacity`` waits for all of it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"decode budget of {capacity} pixels: must be positive")
        self.capacity, self.used, self.queued = capacity, 0, 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    def grant(self) -> Grant:
        return Grant(self)

    async def _acquire(self, n: int) -> None:
        if not self._queue and self.used + n <= self.capacity:
            self.used += n
            return
        if self.queued + n > self.capacity:
            raise RequestRejected(503, "overloaded", f"server busy decoding images ({self.used} "
                                  f"pixels, {self.queued} more waiting; at most {self.capacity} "
                                  "at once); retry shortly")
        entry = (n, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self.queued += n
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._queue:  # still waiting: leave the queue
                self._queue.remove(entry)
                self.queued -= n
                self._wake()
            elif entry[1].done() and not entry[1].cancelled():  # granted as it was cancelled
                self._release(n)
            raise

    def _release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._queue and self.used + self._queue[0][0] <= self.capacity:
            n, fut = self._queue.popleft()
            self.queued -= n
            if not fut.done():
                self.used += n
                fut.set_result(None)


class Grant:
    """One request's share of a :class:`DecodeBudget`.

    ``waiting`` is true from the moment it queues until it is granted (the app answers a request
    that timed out while waiting with 503, not 504). The pixels are held until :meth:`close` and
    until every future passed to :meth:`track` is done: a worker thread that is still decoding
    when its request gives up keeps its share until it stops.
    """

    def __init__(self, budget: DecodeBudget) -> None:
        self.budget, self.pixels, self.waiting = budget, 0, False
        self._busy, self._closed = 0, False

    async def acquire(self, pixels: int) -> None:
        assert self.pixels == 0 and not self._closed, "a grant is acquired once"
        n = min(pixels, self.budget.capacity)
        if n <= 0:
            return
        self.waiting = True
        await self.budget._acquire(n)
        self.waiting, self.pixels = False, n

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Hold the pixels until ``fut`` is done too (whether or not anyone awaits it)."""
        self._busy += 1
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _: Any) -> None:
        self._busy -= 1
        self._maybe_release()

    def close(self) -> None:
        self._closed = True
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self._closed and not self._busy and self.pixels:
            self.budget._release(self.pixels)
            self.pixels = 0

    async def __aenter__(self) -> Grant:
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.close()
