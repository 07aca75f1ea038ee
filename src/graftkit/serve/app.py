"""The FastAPI application of ``graft serve``: :func:`create_app` around one backend.

Requests flow: ``RequestMetrics`` (count, time) -> ``BearerAuth`` (when a token is set) ->
``BodyLimit`` (413 over the limit, counted on the stream) -> the route. ``/v1/predict`` reads the
inputs (multipart ``file`` fields or JSON), decodes and preprocesses them in a worker thread with
bounded memory (:mod:`.decode`: pixel limits per input and per request checked on the headers,
a server-wide budget of pixels decoded at once, each decoded image dropped once preprocessed),
queues them on the micro-batcher, and answers with the calibrated top-k of each. Every client
mistake is a 4xx with ``{"error": {"code", "message"}}``; the whole request is bounded by
``timeout_s`` (504), a full queue or decode budget answers 503 (with ``Retry-After``).

The model loads in the background: ``/healthz`` answers at once, ``/readyz`` once the model is
loaded and has run one warm-up batch. Then the drift reference is read (or, for a run made
before references were stored, computed from its validation split, without blocking requests
for longer than that one pass).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GraftError
from ..modalities import MODALITIES, Modality
from .backends import Backend
from .batching import MicroBatcher, Overloaded
from .decode import Decoder
from .limits import (
    DEFAULT_MAX_DECODE_PIXELS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    BodyLimit,
    DecodeBudget,
    Grant,
    RequestRejected,
)
from .metrics import Metrics, RequestMetrics
from .monitor import Monitor
from .schemas import (
    MAX_ITEMS,
    ExplainResponse,
    Health,
    Info,
    PredictJSON,
    PredictResponse,
    Ready,
    error_responses,
)
from .security import BearerAuth

log = logging.getLogger("graftkit.serve")
MAX_EXPLAIN_WAITING = 4  # Grad-CAM requests queued for the model thread; more is a 503


@dataclass(frozen=True)
class Settings:
    token: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = 10_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS  # one input (413)
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # all inputs of a request (413)
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS  # decoded at once, server-wide (503)
    timeout_s: float = 30.0
    topk: int = 5
    max_queue: int = 1024
    monitor_window: int = 1000


class State:
    """Everything one app holds: the backend, its batcher and monitor, the metrics."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend, self.settings = backend, settings
        self.metrics = Metrics()
        self.batcher = MicroBatcher(backend.forward, settings.max_batch,
                                    settings.max_wait_ms / 1000, settings.max_queue,
                                    on_batch=self.metrics.batch_size.observe)
        self.monitor = Monitor(backend.classes, backend.task, backend.modality.stat_keys,
                               window=settings.monitor_window)
        self.status, self.error = "loading", None
        self.explain_waiting = 0
        self.budget = DecodeBudget(settings.max_decode_pixels)
        self.decode = Decoder(backend.modality, backend.prepare,
                              lambda: getattr(backend, "decode_side", 0), settings.max_pixels,
                              settings.max_request_pixels)

    def model_call(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn`` in the model thread (shared with the batcher: one user at a time)."""
        return asyncio.get_running_loop().run_in_executor(self.batcher.executor, fn, *args)

    async def load(self) -> None:
        b = self.backend
        try:
            await self.model_call(b.load)
            await self.model_call(b.warmup)
        except GraftError as e:  # a damaged or mismatched file: its one line, no traceback
            log.error("loading the model failed: %s", e)
            self.status, self.error = "failed", str(e)
            return
        except Exception as e:  # noqa: BLE001 - reported by /readyz, the server stays up
            log.exception("loading the model failed")
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            return
        self.status = "ready"
        self.metrics.ready.set(1)
        if not b.has_reference():
            self.monitor.set_reference(None, "computing from the run's validation split")
        try:
            ref = await (self.model_call(b.reference) if not b.has_reference() else
                         run_in_threadpool(b.reference))
            self.monitor.set_reference(ref)
        except Exception as e:  # noqa: BLE001 - drift is optional; say why it is missing
            self.monitor.set_reference(None, str(e) if isinstance(e, GraftError) else
                                       f"{type(e).__name__}: {e}")

    def require_ready(self) -> None:
        if self.status != "ready":
            raise RequestRejected(503, "not_ready", f"the model is {self.status}" + (
                f": {self.error}" if self.error else "; retry in a moment"))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _b64(s: str, i: int, field: str) -> bytes:
    if s.startswith("data:") and "," in s:
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(400, "bad_base64", f"{field}[{i}] is not valid base64") from None


# Every modality's JSON field ({"images": [...]}, {"texts": [...]}): a request with another
# modality's field is told which one this model takes.
INPUT_FIELDS = tuple(MODALITIES.get(n).json_field for n in MODALITIES.names())


async def _read_json(request: Request, modality: Modality) -> list[tuple[str, bytes | str]]:
    try:
        body = PredictJSON.model_validate(json.loads(await request.body()))
    except (ValueError, RecursionError) as e:  # json and pydantic errors, absurd nesting
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        where = ".".join(map(str, first["loc"])) if first and first["loc"] else "body"
        msg = f"{where}: {first['msg']}" if first else f"invalid JSON: {e}"
        raise RequestRejected(400, "bad_request", f"{msg}; send {{\"images\": [base64, ...]}} "
                              "or {\"texts\": [...]}") from None
    want = modality.json_field
    other = next((f for f in INPUT_FIELDS if f != want and getattr(body, f)), None)
    if other:
        raise RequestRejected(400, "wrong_modality", f"this model takes {want}, not {other}")
    items = getattr(body, want)
    if not items:
        raise RequestRejected(400, "no_input", f"no {want} given: send {{\"{want}\": [...]}}")
    if modality.form_files:  # files travel as base64
        return [(f"{want}[{i}]", _b64(s, i, want)) for i, s in enumerate(items)]
    return [(t, t) for t in items]


async def _read_multipart(request: Request, modality: Modality
                          ) -> list[tuple[str, bytes | str]]:
    from starlette.datastructures import UploadFile

    from .limits import BodyTooLarge

    try:
        form = await request.form(max_files=MAX_ITEMS, max_fields=MAX_ITEMS)
    except BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed multipart body, in whatever form
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        raise RequestRejected(400, "bad_multipart", f"unreadable multipart body: {detail}"
                              ) from None
    try:
        field = modality.form_field
        unknown = sorted(set(form.keys()) - {field})
        if unknown:
            raise RequestRejected(400, "bad_request", f"unexpected form field(s) "
                                  f"{', '.join(unknown)}; send one or more '{field}' fields")
        values = form.getlist(field)
        if not values:
            raise RequestRejected(400, "no_input", f"no '{field}' field in the form")
        items: list[tuple[str, bytes | str]] = []
        for i, v in enumerate(values):
            if not modality.form_files:
                if not isinstance(v, str):
                    raise RequestRejected(400, "bad_request", f"'{field}' fields hold text, not "
                                          "files")
                items.append((v, v))
            elif isinstance(v, UploadFile):
                items.append((v.filename or f"{field}[{i}]", await v.read()))
            else:
                raise RequestRejected(400, "bad_request", f"'{field}' fields must be uploaded "
                                      "files")
        return items
    finally:
        await form.close()


async def read_inputs(request: Request, modality: Modality) -> list[tuple[str, bytes | str]]:
    """(name, raw bytes or text) of each input of a predict/explain request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        items = await _read_json(request, modality)
    elif ctype == "multipart/form-data":
        items = await _read_multipart(request, modality)
    else:
        raise RequestRejected(415, "unsupported_media_type", f"Content-Type {ctype or 'none'!r}:"
                              " send multipart/form-data or application/json")
    if len(items) > MAX_ITEMS:
        raise RequestRejected(400, "too_many_inputs", f"{len(items)} inputs; at most "
                              f"{MAX_ITEMS} per request")
    return items


def _routes(app: FastAPI, state: State) -> None:  # noqa: C901 - one small function per route
    s, backend = state.settings, state.backend
    page = resources.files("graftkit.serve").joinpath("static/index.html").read_text("utf-8")
    inputs_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictJSON.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "array", "maxItems": MAX_ITEMS,
                                    "items": {"type": "string", "format": "binary"}}}}}}}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'")})

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": state.status, "error": state.error},
                            200 if state.status == "ready" else 503)

    @app.get("/v1/info", response_model=Info, responses=error_responses(401))
    async def info() -> dict[str, Any]:
        return {"source": backend.source, "path": str(backend.path), "model": backend.name,
                "task": backend.task, "modality": backend.modality.name,
                "input": {"files": backend.modality.form_files, "accept": backend.modality.accept,
                          "noun": backend.modality.noun}, "classes": backend.classes,
                "explain": backend.explainable, "auth": s.token is not None, "topk": s.topk,
                "max_batch": s.max_batch, "max_body_bytes": s.max_body_bytes,
                "max_pixels": s.max_pixels, "max_request_pixels": s.max_request_pixels,
                "max_decode_pixels": s.max_decode_pixels}

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=inputs_doc,
              response_model_exclude_none=True,
              responses=error_responses(400, 401, 413, 415, 503, 504))
    async def predict(request: Request, topk: int | None = Query(
            None, ge=1, le=1000, description=f"classes per input (default {s.topk})")
                      ) -> dict[str, Any]:
        state.require_ready()
        k = topk or s.topk

        async def work(grant: Grant) -> list[dict[str, Any]]:
            items = await read_inputs(request, backend.modality)
            prepared = await state.decode(items, grant)
            rows = await asyncio.gather(*state.batcher.submit_nowait(
                [p.model_input for p in prepared]))
            preds = []
            for x, row in zip(prepared, rows):
                p = {"input": x.name, **backend.describe(row, k)}
                state.metrics.record_prediction(p)
                state.monitor.record(p, x.stats)
                preds.append(p)
            return preds

        async with state.budget.grant() as grant:
            preds = await _bounded(work(grant), s.timeout_s, grant)
        return {"model": backend.name, "predictions": preds}

    @app.post("/v1/explain", response_model=ExplainResponse, openapi_extra=inputs_doc,
              responses=error_responses(400, 401, 413, 415, 501, 503, 504))
    async def explain(request: Request, topk: int | None = Query(
            None, ge=1, le=1000, description="classes to list (default 3)")) -> dict[str, Any]:
        if not backend.explainable:
            raise RequestRejected(501, "explain_unavailable", "Grad-CAM is for image "
                                  "classification models served from a run directory")
        state.require_ready()

        async def work(grant: Grant) -> dict[str, Any]:
            items = await read_inputs(request, backend.modality)
            if len(items) != 1:
                raise RequestRejected(400, "one_image", "explain takes exactly one image")
            (x,) = await state.decode(items, grant, keep=True)  # its pixels held until done
            if state.explain_waiting >= MAX_EXPLAIN_WAITING:
                raise Overloaded("too many explanations waiting")
            state.explain_waiting += 1
            try:
                call = grant.track(state.model_call(backend.explain, x.decoded, topk or 3))
                return {"input": x.name, **await asyncio.shield(call)}
            finally:
                state.explain_waiting -= 1

        async with state.budget.grant() as grant:
            return await _bounded(work(grant), s.timeout_s, grant)  # type: ignore[no-any-return]

    @app.get("/v1/monitor", responses=error_responses(401))
    async def monitor() -> dict[str, Any]:
        report = state.monitor.report()
        state.metrics.set_drift(report)
        return report

    @app.get("/metrics", response_class=Response, responses=error_responses(401))
    async def metrics() -> Response:
        state.metrics.set_drift(state.monitor.report())
        state.metrics.queue.set(state.batcher.pending)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _bounded(coro: Any, timeout_s: float, grant: Grant | None = None) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except asyncio.TimeoutError:
        if grant is not None and grant.waiting:  # never started: the server was busy
            raise RequestRejected(503, "overloaded", f"server busy: no room to decode the "
                                  f"inputs within {timeout_s:g} s; retry shortly") from None
        raise RequestRejected(504, "timeout", f"no answer within {timeout_s:g} s; retry later or "
                              "send fewer inputs") from None
    except Overloaded as e:
        raise RequestRejected(503, "overloaded", f"server busy ({e}); retry shortly") from None


def _handlers(app: FastAPI, state: State) -> None:
    m = state.metrics

    @app.exception_handler(RequestRejected)
    async def rejected(_: Request, e: RequestRejected) -> JSONResponse:
        m.error(e.code)
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return _error(e.status, e.code, e.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        m.error("bad_request")
        first = e.errors()[0] if e.errors() else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", []))
        return _error(400, "bad_request", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        m.error(code)
        return _error(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        m.error("internal")
        return _error(500, "internal", f"internal error ({type(e).__name__}); see the server log")


def create_app(backend: Backend, settings: Settings | None = None) -> FastAPI:
    """The app serving ``backend`` (see :mod:`graftkit.serve.backends`). The model loads when
    the app starts (its lifespan), in the background."""
    s = settings or Settings()
    state = State(backend, s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        await state.batcher.start()
        loading = asyncio.create_task(state.load())
        yield
        loading.cancel()
        await state.batcher.stop()

    app = FastAPI(title="graft serve", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description=f"{backend.name} ({backend.task}, "
                  f"{backend.modality.name}) from {backend.source} {backend.path}")
    app.state.graft = state
    _routes(app, state)
    _handlers(app, state)
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes, on_reject=state.metrics.error)
    if s.token is not None:
        app.add_middleware(BearerAuth, token=s.token, on_reject=state.metrics.error)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app
