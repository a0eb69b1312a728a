"""The application factory. ``create_app(settings)`` is the one way to build the api."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

from service.auth import ADMIN, ADMIN_SCHEME, READ, Tokens
from service.batching import Batcher
from service.config import Settings
from service.db.session import build_engine, build_sessionmaker
from service.errors import register_error_handlers
from service.forecast_log import ForecastRecorder
from service.limits import BodyLimits
from service.model_set import ModelSet, load_model_set
from service.observability import Metrics, RequestContext, configure_logging
from service.plain_routes import PlainRoutes
from service.registry import RegistryWatcher
from service.routes import forecast, health, models, retrain, series
from service.routes import metrics as metrics_route
from service.routes.metrics import register_state_gauges
from service.schemas import ErrorBody, ForecastRequest, ObservationIn
from service.serving import Serving
from service.window_cache import ChangeListener, WindowCache

logger = logging.getLogger(__name__)


async def follow_registry(app: FastAPI, watcher: RegistryWatcher) -> None:
    """Check the champion aliases now and every registry_poll_s; swap in what passes. The
    registry calls, downloads and session builds run in a thread, off the event loop."""
    while True:
        try:
            swapped = await asyncio.to_thread(watcher.check, app.state.models)
        except Exception:  # the registry is down or answers nonsense: keep serving, try again
            logger.exception("could not check the model registry")
        else:
            if swapped is not None:
                app.state.models = swapped  # one assignment: a request sees old or new
        await asyncio.sleep(watcher.settings.registry_poll_s)


# The answers every route of a kind may give, added to each operation of the document so
# clients (and schemathesis) know them; each has the api's one error shape.
ERROR_ANSWERS = {
    "400": "The body could not be read (not UTF-8, or not JSON where JSON is expected).",
    "401": "No bearer token, or not a valid one.",
    "403": "The read token on a route of the admin scope.",
    "413": "The body is over FORECAST_MAX_BODY_BYTES.",
    "422": "A field breaks the schema or a limit (FORECAST_MAX_*); detail names it.",
    "503": "The database is unreachable, or no model is loaded; retry after Retry-After.",
}


def complete_openapi(app: FastAPI, models: list[type[BaseModel]], settings: Settings) -> None:
    """Three additions to the generated document.

    - Routes that read their body themselves (for speed, or to take CSV too) declare it with
      openapi_extra, by reference: the referenced schemas go in the components.
    - The error answers of each operation: 401 (and 403 for the admin scope) where a token is
      needed, 503 where the database or a model is, 400/413/422 where there is a body.
    - The limits set by settings, as maxItems and maximum, so a client sees this api's.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            add_limits(components, settings)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    add_error_answers(operation)
                    add_operation_limits(operation, settings)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_limits(components: dict[str, Any], settings: Settings) -> None:
    components["ForecastRequest"]["properties"]["series"]["maxItems"] = (
        settings.max_series_per_request
    )
    for option in components["SeriesInput"]["properties"]["history"]["anyOf"]:
        if option.get("type") == "array":
            option["maxItems"] = settings.max_history_length


def add_operation_limits(operation: dict[str, Any], settings: Settings) -> None:
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "limit":
            parameter["schema"]["maximum"] = settings.max_page_size
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None and body["schema"].get("type") == "array":  # observation uploads
        body["schema"]["maxItems"] = settings.max_observations_per_request


def add_error_answers(operation: dict[str, Any]) -> None:
    schemes = {name for need in operation.get("security", []) for name in need}
    codes = []
    if schemes:
        codes += ["401", "503"] + (["403"] if ADMIN_SCHEME in schemes else [])
    if "requestBody" in operation:
        codes += ["400", "413", "422"]
    responses = operation.setdefault("responses", {})
    for code in codes:
        responses.setdefault(
            code,
            {
                "description": ERROR_ANSWERS[code],
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            },
        )


GIL_SWITCH_INTERVAL_S = 0.0001
GC_THRESHOLDS = (50_000, 10, 10)


def tune_process() -> None:
    """Two process-wide settings the serving benchmark called for.

    - The GIL switch interval, 5 ms by default, is how long a thread doing Python work may
      keep another thread waiting for the GIL. A thread (the forecast log's writer, planning
      a large request) kept the event loop waiting: at 0.5 ms, a 1,000-series request's p99
      went from about 115 to 80 ms. And the event loop, busy under load, keeps the inference
      thread waiting each time a session call returns: at 0.5 ms a batch of one took 1.0 ms
      in the api (0.2 ms alone), at 0.1 ms 0.58 ms, and one inline series at 16 connections
      made 20-29% more requests/s (medians of two sets of interleaved 5 s wrk runs: 5,027
      against 4,198 and 5,911 against 4,565 req/s, 16 of 18 runs faster). 0.03 and 0.2 ms did
      as well as 0.1; the 1,000-series request was no slower (p50 62.6 against 66.0 ms).
    - glibc raises its mmap threshold after a large block is freed, so later large blocks
      (a 1,000-series answer's buffers) come from the heap and stay in the process once
      freed: +110 MB of resident memory after one such request, for good. Setting the trim
      threshold turns that adjustment off (Linux with glibc; elsewhere nothing changes).
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold = -1
    libc.mallopt(m_trim_threshold, 1024 * 1024)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    tune_process()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Bundles that can't be served are refused and logged; with none loaded the process
        # stays up (live) but not ready, with the reasons in /health/ready, so an orchestrator
        # reports it instead of crash-looping.
        app.state.models = load_model_set(
            settings.models_dir,
            settings.provider,
            settings.intra_op_threads,
            settings.default_models,
        )
        # The engine connects lazily: the api starts (and reports why it isn't ready) even
        # while the database is down. The schema comes from `python -m service migrate`.
        engine = build_engine(settings.database_url)
        sessions = build_sessionmaker(engine)
        app.state.engine, app.state.sessions = engine, sessions
        batcher = Batcher(
            settings.inference_threads, settings.batch_max_rows, metrics.observe_inference
        )
        recorder = ForecastRecorder(
            sessions,
            settings.forecast_log_flush_s,
            settings.forecast_log_max_pending,
            on_drop=metrics.log_rows_dropped.inc,
        )
        recorder.start()
        windows, listener = None, None
        if settings.series_cache_size > 0 and engine.dialect.name == "postgresql":
            windows = WindowCache(settings.series_cache_size)
            listener = ChangeListener(settings.database_url, windows)
            listener.start()
        app.state.serving = Serving(settings, sessions, batcher, recorder, windows)
        logger.info("database: %s", engine.url.render_as_string(hide_password=True))
        app.state.tokens = Tokens.from_settings(settings)
        # Everything loaded so far (modules, models, the app) lives as long as the process. A
        # full garbage collection walked all of it, a 70-90 ms pause every second under load;
        # frozen, it is left out of collections (the start-up collect makes that set small).
        # What stays young is collected less often than Python's default (700 allocations):
        # a 1,000-series forecast allocates tens of thousands of containers, and the
        # collections they set off included a 10-15 ms full one every ninth request. The
        # service makes few reference cycles; those it makes are still collected.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        watcher = None
        if settings.registry_poll_s > 0:
            watcher = asyncio.create_task(follow_registry(app, RegistryWatcher(settings)))
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        await recorder.stop()  # requests have finished: write the rest of the forecast log
        batcher.close()
        engine.dispose()

    app = FastAPI(
        title="LSTM forecasting service",
        version="0.1.0",
        description="Forecasts from global LSTM models served with onnxruntime.",
        lifespan=lifespan,
        telemetry=None
        if settings.opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    metrics = Metrics()
    app.state.metrics = metrics
    register_state_gauges(app, metrics)
    app.state.models = ModelSet(models={}, refused={"": "starting up"})
    complete_openapi(app, [ForecastRequest, ObservationIn, ErrorBody], settings)
    # Innermost of the api's middleware: POST /forecast skips FastAPI's inner layers.
    app.add_middleware(PlainRoutes, routes=forecast.FAST_ROUTES)
    app.add_middleware(
        BodyLimits,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
    )
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        access_log=settings.access_log,
        plain_routes=forecast.FAST_ROUTES,
    )
    register_error_handlers(app)
    app.include_router(forecast.router)
    app.include_router(health.router)
    app.include_router(series.router)
    app.include_router(retrain.router)
    app.include_router(models.router)
    if settings.metrics != "off":
        scope = {"open": [], "read": [READ], "admin": [ADMIN]}[settings.metrics]
        app.include_router(metrics_route.router, dependencies=scope)
    if settings.cors_origins:
        # Outermost, so preflight requests are answered before the auth and body checks.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    return app
