"""The forecast request path on the event loop: what runs where.

Small requests (up to ``inline_batch_max`` series) are planned and answered on the event
loop: that work takes tens of microseconds, less than a thread hop. Anything that waits or
grows with the request goes elsewhere: database reads to the thread pool, planning and
answering large requests to the thread pool, and every model inference to the batcher's
inference thread, where concurrent requests share one session call. So the loop never runs a
model and never blocks on a large batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import orjson
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.batching import Batcher
from service.config import Settings
from service.db.repository import StoredWindow
from service.forecast_log import ForecastRecorder
from service.forecasting import (
    Plan,
    assemble,
    by_model,
    check_series_count,
    check_windows,
    log_rows,
    plan_request,
    read_windows,
)
from service.model_set import ModelSet
from service.schemas import ForecastRequest, SeriesForecastData
from service.window_cache import WindowCache


@dataclass(frozen=True)
class Serving:
    """What the forecast routes need besides the models (built in the lifespan)."""

    settings: Settings
    sessions: sessionmaker[Session]
    batcher: Batcher
    recorder: ForecastRecorder
    windows: WindowCache | None  # None: every stored window is read from the database

    def series_changed(self, series_id: str) -> None:
        """A change to the series committed: forget its cached window."""
        if self.windows is not None:
            self.windows.invalidate(series_id)


async def answer(request: ForecastRequest, models: ModelSet, serving: Serving) -> bytes:
    """The JSON body of the ForecastResponse for ``request``."""
    issued_at = datetime.now(UTC)  # before the windows are read: the forecast log's time
    check_series_count(request, serving.settings)  # before any stored series is read
    small = len(request.series) <= serving.settings.inline_batch_max
    stored = None
    if any(s.is_stored for s in request.series):
        stored = await stored_windows(request, models, serving)

    def prepare() -> tuple[list[Plan], list[list[Plan]]]:
        plans = plan_request(request, models, serving.settings, stored)
        return plans, by_model(plans)

    plans, groups = prepare() if small else await run_in_threadpool(prepare)
    # Each model's windows go to the batcher as they are (lists, or arrays of stored series):
    # it builds and checks the batch's input array in the inference thread.
    predictions = [
        serving.batcher.predict(
            group[0].forecaster,
            [p.values for p in group],
            [p.position for p in group],
            partial(check_windows, group),
        )
        for group in groups
    ]
    # One model is the usual case: awaited directly (gather would wrap it in a task).
    if len(predictions) == 1:
        outputs = [await predictions[0]]
    else:
        outputs = list(await asyncio.gather(*predictions))

    def finish() -> tuple[list[SeriesForecastData], bytes]:
        forecasts = assemble(plans, groups, outputs, request)
        # A ForecastResponse's JSON, written by orjson from the plain data.
        return forecasts, orjson.dumps({"forecasts": forecasts})

    forecasts, body = finish() if small else await run_in_threadpool(finish)
    if stored:
        serving.recorder.add(log_rows(forecasts, plans, request.horizon, issued_at, stored))
    return body


async def stored_windows(
    request: ForecastRequest, models: ModelSet, serving: Serving
) -> dict[str, StoredWindow]:
    """The latest window of every stored series the request names: from the cache, and from
    the database (in a thread) for the rest."""
    ids = [s.id for s in request.series if s.is_stored]
    size = max(f.manifest.input_size for f in models.models.values())
    cache = serving.windows
    if cache is None:
        return await run_in_threadpool(read_windows, request, ids, size, serving.sessions)
    windows, missing = cache.get(ids, size)
    if missing:
        generation = cache.begin_read()
        read = await run_in_threadpool(read_windows, request, missing, size, serving.sessions)
        cache.fill(read, size, generation)
        windows.update(read)
    return windows
