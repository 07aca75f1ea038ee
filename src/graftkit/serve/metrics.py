"""Prometheus metrics of one server, in a registry of its own (two apps in one process, as in
the tests, never share or clash), and the ASGI middleware that times every request.

Route labels come from a fixed list (anything else is ``other``), so a client probing random
paths cannot grow the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .limits import ASGIApp, Message, Receive, Scope, Send

ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/info", "/v1/predict",
          "/v1/explain", "/v1/monitor")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONF_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("graft_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("graft_errors", "Error responses by kind", ["kind"], registry=r)
        self.latency = Histogram("graft_request_latency_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("graft_batch_size", "Inputs per model call (micro-batches)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.predictions = Counter("graft_predictions", "Served predictions by decided class",
                                   ["label"], registry=r)
        self.confidence = Histogram("graft_confidence", "Calibrated probability of the decided "
                                    "class", buckets=CONF_BUCKETS, registry=r)
        self.ready = Gauge("graft_model_ready", "1 once the model is loaded and warmed up",
                           registry=r)
        self.queue = Gauge("graft_queue_inputs", "Inputs waiting for the model", registry=r)
        self.class_psi = Gauge("graft_drift_class_psi", "PSI of live predicted classes vs the "
                               "training reference (NaN until there is enough data)", registry=r)
        self.conf_psi = Gauge("graft_drift_confidence_psi", "PSI of live confidence vs the "
                              "training reference", registry=r)
        self.conf_shift = Gauge("graft_drift_confidence_shift", "Live mean confidence minus the "
                                "reference's", registry=r)
        self.input_shift = Gauge("graft_drift_input_shift_std", "Live mean of an input statistic "
                                 "minus the reference's, in reference standard deviations",
                                 ["stat"], registry=r)
        self.live_n = Gauge("graft_drift_window_inputs", "Predictions in the drift window",
                            registry=r)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def record_prediction(self, p: dict[str, Any]) -> None:
        if "label" in p and p["label"] is not None:
            self.predictions.labels(p["label"]).inc()
            self.confidence.observe(float(p["prob"]))
        elif "labels" in p:  # multi-label: one count per label decided
            for name in p["labels"]:
                self.predictions.labels(name).inc()
            self.confidence.observe(float(p["confidence"]))

    def set_drift(self, report: dict[str, Any]) -> None:
        """Copy a monitor report into the gauges (NaN where a number is not available yet)."""
        nan = float("nan")
        enough = report["status"] not in ("insufficient_data", "no_reference")

        def num(v: Any) -> float:
            return float(v) if enough and v is not None else nan

        self.live_n.set(report["n"])
        self.class_psi.set(num((report.get("classes") or {}).get("psi")))
        conf = report.get("confidence") or {}
        self.conf_psi.set(num(conf.get("psi")))
        self.conf_shift.set(num(conf.get("shift")))
        for stat, v in (report.get("inputs") or {}).items():
            self.input_shift.labels(stat).set(num(v.get("shift_std")))


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by route and final status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500  # unless a response starts
        t0 = time.perf_counter()

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
