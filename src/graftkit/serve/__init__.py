"""``graft serve``: a finished run or an ONNX export bundle behind a small, safe HTTP API.

    app.py        FastAPI factory: /v1/predict, /v1/explain, /v1/monitor, /v1/info, /healthz,
                  /readyz, /metrics, / (the web page in static/)
    backends.py   what runs the model: a run directory (torch) or an ONNX bundle (onnxruntime)
    batching.py   dynamic micro-batching of concurrent requests
    decode.py     a request's inputs -> model inputs with bounded memory (drop as you go)
    limits.py     body limit (counted on the stream), pixel limits, the decode budget
    security.py   loopback by default; bearer token for anything wider
    monitor.py    drift of live traffic against the run's reference.json
    metrics.py    Prometheus metrics, one registry per app
    cli.py        the command: checks, then uvicorn

Importing this package is cheap: FastAPI, uvicorn and prometheus-client (the ``serve`` extra)
are imported when a server is built, with an install hint when they are missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["cli_serve", "create_app", "open_backend", "require_serve_deps"]

if TYPE_CHECKING:
    from .app import create_app
    from .backends import open_backend
    from .cli import cli_serve, require_serve_deps

_WHERE = {"create_app": "app", "open_backend": "backends", "cli_serve": "cli",
          "require_serve_deps": "cli"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        if name == "create_app":
            import_module(".cli", __name__).require_serve_deps()
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
