"""Prometheus metrics of the service, in a registry owned by one app (so several apps can coexist).

The server runs one worker process per container (scale by replicas), so prometheus-client's
default single-process collectors are correct; there is no multiprocess mode.

Label values are bounded: ``route`` is the matched route template (``/intent``, ``/docs``), or
``unmatched`` for every path that no route matches; ``status`` is the HTTP status code.

Beside the ``quads_*`` metrics, each registry carries the standard process (``process_*``:
resident memory, CPU seconds, open files, start time) and garbage-collector (``python_gc_*``)
collectors. Counters export no ``_created`` series: a scrape that doubles every counter's
series for a timestamp nobody graphs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.asgi import HttpMiddleware, WatchedSend

if TYPE_CHECKING:
    from service.api.schemas import ModelInfo

# Seconds; dense over the 1-500 ms a request takes, with a tail for 30-s clips on a busy host.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.4,
    0.6,
    0.8,
    1.0,
    1.5,
    2.5,
)
AUDIO_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("decode", "features", "inference", "total")
REJECT_REASONS = ("overloaded", "uploads", "draining")
UNMATCHED_ROUTE = "unmatched"


class ServiceMetrics:
    """Every metric the service exports, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # process-wide in prometheus-client; set where the metrics are made
        self.registry = r = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.stage_duration = Histogram(
            "quads_stage_duration_seconds",
            "Time per /intent request in each stage; total includes queueing.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "quads_http_requests", "HTTP requests by route template and status code.", ["route", "status"], registry=r
        )
        self.http_duration = Histogram(
            "quads_http_request_duration_seconds",
            "From a request's head to its answer's last byte, by route and status.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_duration = Histogram(
            "quads_audio_duration_seconds",
            "Seconds of audio per /intent request.",
            buckets=AUDIO_SECONDS_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            "quads_intent_answers",
            "POST /intent answers, by whether the clip was understood as a command.",
            ["understood"],
            registry=r,
        )
        self.in_flight = Gauge("quads_requests_in_flight", "POST /intent requests being handled.", registry=r)
        self.batch_size = Histogram(
            "quads_batch_size", "Clips per model call (micro-batch size).", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("quads_queue_depth", "Requests waiting for the model.", registry=r)
        self.rejected = Counter("quads_rejected", "Requests refused with 503, by reason.", ["reason"], registry=r)
        self.model_file_bytes = Gauge("quads_model_file_bytes", "Size of the checkpoint file.", registry=r)
        self.model_memory_bytes = Gauge(
            "quads_model_memory_bytes", "Bytes of the loaded (dequantized) model.", registry=r
        )
        self.model_parameters = Gauge("quads_model_parameters", "Parameters of the loaded model.", registry=r)
        # Not quads_model_bits: promtool rejects "bits" as a non-base unit ("use bytes").
        self.model_bit_width = Gauge("quads_model_bit_width", "Bit width of the quantized weights.", registry=r)
        self.model_info = Info("quads_model", "The served checkpoint.", registry=r)
        for stage in STAGES:  # expose every series from the start, at zero
            self.stage_duration.labels(stage)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for understood in ("true", "false"):
            self.answers.labels(understood)

    def set_model(self, info: ModelInfo) -> None:
        self.model_file_bytes.set(info.file_bytes)
        self.model_memory_bytes.set(info.memory_bytes)
        self.model_parameters.set(info.params)
        self.model_bit_width.set(info.bits)
        self.model_info.info(
            {"name": info.name, "bits": str(info.bits), "sha256": info.sha256, "compute_path": info.compute_path}
        )

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.stage_duration.labels(stage).observe(value)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class HttpMetricsMiddleware(HttpMiddleware):
    """Counts every HTTP response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        watched = WatchedSend(send)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, watched)
        finally:  # 500: what the client gets if the app raises before responding
            labels = (route_template(scope), str(watched.status or 500))
            self.metrics.http_requests.labels(*labels).inc()
            self.metrics.http_duration.labels(*labels).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The path template of the route the router matched (``/intent``), never the raw path.

    FastAPI records the matched route in the scope for its API routes only; for its own pages
    (``/docs``, ``/openapi.json``) the app's routes are matched again here.
    """
    answered_by = scope.get("state", {}).get("route_template")  # set by middleware that answers for a route
    if answered_by is not None:
        return answered_by
    route = scope.get("route")
    if route is None and "app" in scope:
        route = next((r for r in getattr(scope["app"], "routes", ()) if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED_ROUTE
