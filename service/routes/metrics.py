"""Prometheus metrics at /metrics, and the state gauges read when it is scraped."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.db import jobs
from service.model_set import ModelSet
from service.observability import Metrics, gauge

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def metrics(request: Request) -> Response:
    """Request counts and latency by route and status, inference time and batch size by model,
    the models loaded with their versions, retrain jobs by status, process memory and CPU."""
    registry = request.app.state.metrics.registry
    # In a thread: the retrain job gauge reads the database.
    return Response(
        await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST
    )


def register_state_gauges(app: FastAPI, metrics: Metrics) -> None:
    def collect() -> Iterator[Metric]:
        models: ModelSet = app.state.models
        loaded = gauge(
            "forecast_model_loaded",
            "1 for each model being served, labelled with its version, provider and source.",
            ["model", "version", "provider", "source"],
        )
        for name, f in sorted(models.models.items()):
            loaded.add_metric([name, f.manifest.version, f.provider, f.source], 1)
        yield loaded
        refused = gauge("forecast_model_refused", "Bundles refused at start-up or swap.", [])
        refused.add_metric([], len(models.refused))
        yield refused
        pending = gauge(
            "forecast_log_pending_rows", "Forecast log rows not yet written to the database.", []
        )
        pending.add_metric([], len(app.state.serving.recorder.rows))
        yield pending
        cache = app.state.serving.windows
        if cache is not None:
            listening = gauge(
                "forecast_series_cache_listening",
                "1 while the stored-window cache serves (its change listener is connected).",
                [],
            )
            listening.add_metric([], 1 if cache.enabled else 0)
            yield listening
            entries = gauge("forecast_series_cache_entries", "Stored windows cached.", [])
            entries.add_metric([], len(cache))
            yield entries
            reads = CounterMetricFamily(
                "forecast_series_cache_reads",
                "Stored windows asked of the cache: served from it (hit) or read (miss).",
                labels=["result"],
            )
            reads.add_metric(["hit"], cache.hits)
            reads.add_metric(["miss"], cache.misses)
            yield reads
        database_up = gauge(
            "forecast_database_up", "1 if the scrape could read the database, else 0.", []
        )
        try:
            with app.state.sessions() as session:
                counts = jobs.count_by_status(session)
        except SQLAlchemyError as exc:
            logger.warning("metrics: could not count retrain jobs: %s", exc)
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up
        by_status = gauge("forecast_retrain_jobs", "Retrain jobs by status.", ["status"])
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status

    metrics.add_state(collect)
