"""Input limits of the server: request body size (counted on the stream) and image pixels.

- :class:`BodyLimit` is a plain ASGI middleware. It refuses a declared ``Content-Length`` over the
  limit before reading anything, and counts the bytes of every body chunk it passes on, so a
  chunked upload (no length declared) is cut off as soon as it goes over: memory stays bounded by
  the limit whatever the client claims.
- :func:`decode_image` reads only the image header first and refuses more pixels than allowed
  before Pillow decodes anything (a decompression bomb: a small PNG of a huge blank image), then
  decodes exactly as ``graftkit.data.images.load_image`` does for files (EXIF rotation, RGB).
  Only common raster formats are opened: no PostScript (Ghostscript), no plugins beyond them.

Both raise :class:`RequestRejected`, which the app turns into a JSON error with its status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image

from ..data import images

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_PIXELS = 25_000_000  # a 24-megapixel photo fits; ~75 MB decoded as RGB


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
