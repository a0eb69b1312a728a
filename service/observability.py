"""Metrics (Prometheus, served at /metrics), JSON logs, and a request id on every request.

Each api process keeps its own metrics registry (created with the app, so tests can build
several apps); compose runs one uvicorn worker per api container, so one scrape target is one
process. Gauges that describe state (models loaded, retrain jobs by status, forecast log rows
waiting) are read when scraped, not kept up to date on every change.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.plain_routes import PlainRoute

access_logger = logging.getLogger("service.access")
errors_logger = logging.getLogger("service.errors")
INTERNAL_ERROR = (
    b'{"detail":[{"loc":[],"msg":"internal server error; the log has it under this '
    b'request id (X-Request-ID)","type":"internal_error"}]}'
)

# The id of the request being handled, for every log record written while handling it.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_HEADER = "x-request-id"
# A caller's own id is kept when it looks like an id (so one id follows a call across
# services); anything else is replaced rather than echoed into logs and headers.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The api's metrics, in a registry of its own."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double every counter's lines
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # resident memory, CPU seconds, open fds
        self.requests = Counter(
            "forecast_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "forecast_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte, by route and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "forecast_inference_duration_seconds",
            "Time of one onnxruntime session call (one batch), by model.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "forecast_inference_batch_size",
            "Series per session call: concurrent requests batched together, by model.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.log_rows_dropped = Counter(
            "forecast_log_dropped_rows_total",
            "Forecast log rows dropped because the database stayed unreachable too long.",
            registry=self.registry,
        )

    def observe_inference(self, model: str, rows: int, seconds: float) -> None:
        """The batcher's hook (called from the inference thread; prometheus_client is
        thread-safe)."""
        self.inference_seconds.labels(model).observe(seconds)
        self.batch_rows.labels(model).observe(rows)

    def add_state(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """A collector called at scrape time (models loaded, jobs by status...)."""
        self.registry.register(_StateCollector(collect))


class _StateCollector(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape: skips the registry's duplicate-name check


def gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class RequestContext:
    """Pure ASGI middleware (no per-request task or body buffering, unlike BaseHTTPMiddleware):
    gives each request an id (the caller's ``X-Request-ID`` if it is a plausible id), returns it
    in the response header, times the request, counts it by route template and status, and
    writes one access log record."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, access_log: str, plain_routes: list[PlainRoute]
    ) -> None:
        self.app = app
        self.metrics = metrics
        # FastAPI's router (which replaces Starlette's Router.app) puts its routes in
        # scope["route"]; service.plain_routes puts only the endpoint in scope["endpoint"]:
        # those are labelled through this map.
        self.plain_paths: dict[Any, str] = {route.endpoint: route.path for route in plain_routes}
        # Which answers get an access log record: all, 4xx and 5xx, or 5xx only.
        self.log_from_status = {"all": 0, "errors": 400, "off": 500}[access_log]
        # Cheaper than uuid4 per request, and as unique within the process: a random prefix
        # per process and a counter.
        self.prefix = secrets.token_hex(6)
        self.counter = itertools.count(1)
        self.series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        if given is not None and _VALID_REQUEST_ID.match(given):
            rid = given.decode()
        else:
            rid = f"{self.prefix}-{next(self.counter):x}"
        token = request_id.set(rid)
        status = 500  # unless a response starts: an exception escaped every handler
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged here, while the request id is still set, and answered here so the 500
            # carries the id too (Starlette's last-resort handler sits outside this one).
            errors_logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started_response:
                raise
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_with_id({"type": "http.response.body", "body": INTERNAL_ERROR})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = (  # bounded label values: templates, not paths
                getattr(route, "path", None)
                or self.plain_paths.get(scope.get("endpoint"))
                or "unmatched"
            )
            method = scope["method"]
            key = (method, template, status)
            series = self.series.get(key)
            if series is None:  # labels() costs a lock and a lookup: once per combination
                labels = (method, template, str(status))
                series = self.series[key] = (
                    self.metrics.requests.labels(*labels),
                    self.metrics.request_seconds.labels(*labels),
                )
            series[0].inc()
            series[1].observe(elapsed)
            if status >= self.log_from_status:
                access_logger.info(
                    "%s %s %d",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1e3, 3),
                        "client": (scope.get("client") or ("-",))[0],
                    },
                )
            request_id.reset(token)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str, log_format: str) -> None:
    """JSON lines (or plain text) on stderr for the api's loggers and uvicorn's, each with the
    request id. A no-op when the host already set up logging (pytest, an embedding app)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601, UTC
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers write through this handler too (python -m service serve passes
    # log_config=None); its own access log is replaced by service.access.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
