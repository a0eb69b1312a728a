"""Forecasts for inline histories and stored series."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from service.deps import ModelsDep, SessionsDep, SettingsDep
from service.errors import ServiceError
from service.forecasting import run_forecast
from service.schemas import SERIES_ID_PATTERN, ForecastRequest, ForecastResponse, SeriesInput

router = APIRouter(tags=["forecast"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "A stored series named in the request does not exist."},
    422: {"description": "A series or the horizon breaks a limit; detail names the field."},
    503: {"description": "No model is loaded."},
}


@router.post("/forecast", response_model=ForecastResponse, responses=ERRORS)
async def forecast(
    body: ForecastRequest, models: ModelsDep, settings: SettingsDep, sessions: SessionsDep
) -> ForecastResponse:
    """Series are either stored (``{"id": "air"}``) or inline (``id``, ``history``, ``start``,
    ``freq``); both may be mixed. All of them run as one batched inference."""
    # An inline-only request takes well under a millisecond, so it runs on the event loop (a
    # thread hop would cost more than the work). Database reads and large batches go to the
    # thread pool so the loop keeps serving other requests meanwhile.
    inline_only = not any(s.is_stored for s in body.series)
    if inline_only and len(body.series) <= settings.inline_batch_max:
        forecasts = run_forecast(body, models, settings, sessions)
    else:
        forecasts = await run_in_threadpool(run_forecast, body, models, settings, sessions)
    return ForecastResponse(forecasts=forecasts)


@router.get("/series/{series_id}/forecast", response_model=ForecastResponse, responses=ERRORS)
async def forecast_stored(
    series_id: Annotated[str, Path(pattern=SERIES_ID_PATTERN)],
    models: ModelsDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    horizon: Annotated[int, Query(ge=1)],
    level: Annotated[list[float] | None, Query(gt=0, lt=100)] = None,
    model: Annotated[str | None, Query(description="Default: the series' frequency's.")] = None,
) -> ForecastResponse:
    """The forecast for one stored series, from its latest observations."""
    body = ForecastRequest(
        series=[SeriesInput(id=series_id)], horizon=horizon, level=level, model=model
    )
    try:
        forecasts = await run_in_threadpool(run_forecast, body, models, settings, sessions)
    except ServiceError as exc:
        if exc.loc[:3] == ["body", "series", 0]:
            exc.loc = ["path", "series_id"]  # this request has no body: point at the path
        raise
    return ForecastResponse(forecasts=forecasts)
