"""``graft serve``: check everything the user gave, then run uvicorn.

Every mistake (missing extra, bad path, a bundle that is not ONNX, an unprotected public address,
a busy port, an impossible limit) is a one-line :class:`GraftError` before the server starts.
The socket is bound here, so ``--port 0`` picks a free port and the line printed names it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

from ..errors import GraftError

# module -> the PyPI package that provides it
DEPS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
        "python_multipart": "python-multipart"}
TOKEN_ENV = "GRAFT_SERVE_TOKEN"
LIMIT_CONCURRENCY = 256  # open connections beyond this get 503 from uvicorn: bounded memory


def require_serve_deps() -> None:
    missing = [pkg for mod, pkg in DEPS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise GraftError(f"graft serve needs {', '.join(missing)}: pip install "
                         "'graftkit[serve]'")


def _check_limits(port: int, max_batch: int, max_wait_ms: float, max_body_mb: float,
                  max_pixels: int | None, timeout_s: float, topk: int,
                  max_request_pixels: int | None = None, max_decode_pixels: int | None = None
                  ) -> None:
    from .limits import DEFAULT_MAX_PIXELS

    image = max_pixels or DEFAULT_MAX_PIXELS
    checks = [
        (0 <= port <= 65535, f"--port {port}: use 0 (any free port) to 65535"),
        (1 <= max_batch <= 256, f"--max-batch {max_batch}: use 1 (no batching) to 256"),
        (0 <= max_wait_ms <= 1000, f"--max-wait-ms {max_wait_ms:g}: use 0 to 1000"),
        (0 < max_body_mb <= 1024, f"--max-body-mb {max_body_mb:g}: use more than 0, at most "
         "1024"),
        (max_pixels is None or max_pixels >= 1, f"--max-pixels {max_pixels}: must be positive"),
        (max_request_pixels is None or max_request_pixels >= image,
         f"--max-request-pixels {max_request_pixels}: use at least --max-pixels ({image}), or "
         "a request of one image at the limit is refused"),
        (max_decode_pixels is None or max_decode_pixels >= image,
         f"--max-decode-pixels {max_decode_pixels}: use at least --max-pixels ({image}), or "
         "an image at the limit cannot be decoded"),
        (0 < timeout_s <= 3600, f"--timeout-s {timeout_s:g}: use more than 0, at most 3600"),
        (1 <= topk <= 1000, f"--topk {topk}: use 1 to 1000"),
    ]
    for ok, message in checks:
        if not ok:
            raise GraftError(message)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``, or a one-line error."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise GraftError(f"--host {host!r}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise GraftError(f"cannot listen on {host}:{port} ({e.strerror}); choose another "
                         "--port, or --port 0 for any free one") from None
    sock.set_inheritable(True)
    return sock


def cli_serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000,
              token: str | None = None, insecure: bool = False, max_batch: int = 16,
              max_wait_ms: float = 5.0, max_body_mb: float = 10.0,
              max_pixels: int | None = None, timeout_s: float = 30.0, topk: int = 5,
              log_level: str = "info", *, max_request_pixels: int | None = None,
              max_decode_pixels: int | None = None) -> None:
    """Serve a run directory or an ONNX bundle until interrupted.

    ``max_pixels`` bounds one image, ``max_request_pixels`` all images of a request (both 413,
    from the headers), ``max_decode_pixels`` the pixels decoded at once across the server (503
    beyond it and its waiting room); None: the defaults in :mod:`.limits`."""
    from .limits import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS
    from .security import check_bind, is_loopback

    require_serve_deps()
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    _check_limits(port, max_batch, max_wait_ms, max_body_mb, max_pixels, timeout_s, topk,
                  max_request_pixels, max_decode_pixels)
    check_bind(host, token, insecure)
    from .backends import open_backend

    backend = open_backend(path)
    sock = bind_socket(host, port)
    import uvicorn

    from .app import Settings, create_app

    settings = Settings(token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        max_body_bytes=int(max_body_mb * 1_000_000),
                        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                        max_request_pixels=max_request_pixels or DEFAULT_MAX_REQUEST_PIXELS,
                        max_decode_pixels=max_decode_pixels or DEFAULT_MAX_DECODE_PIXELS,
                        timeout_s=timeout_s, topk=topk)
    app = create_app(backend, settings)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    kind = f"{backend.task}, {backend.modality.name}" + (
        f", {len(backend.classes)} classes" if backend.classes else "")
    print(f"serving {backend.path} ({backend.name}; {kind}) from a {backend.source}", flush=True)
    auth = "bearer token required" if token else "no token"
    if not is_loopback(host) and token is None:
        auth = "NO TOKEN (--insecure): anyone who can reach this address can use it"
    batching = f"up to {max_batch} per batch, {max_wait_ms:g} ms wait" if max_batch > 1 else \
        "off"
    print(f"listening on http://{shown}:{bound}/ ({auth}; batching {batching}); Ctrl+C stops",
          flush=True)
    config = uvicorn.Config(app, host=host, port=bound, log_level=log_level, access_log=False,
                            limit_concurrency=LIMIT_CONCURRENCY, server_header=False,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
