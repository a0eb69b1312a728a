"""POST /forecast: inline history in, point forecasts with timestamps out."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import ForecasterDep, SettingsDep
from service.forecasting import run_forecast
from service.schemas import ForecastRequest, ForecastResponse

router = APIRouter(tags=["forecast"])


@router.post(
    "/forecast",
    response_model=ForecastResponse,
    responses={
        422: {"description": "A series or the horizon breaks a limit; detail names the field."},
        503: {"description": "No model is loaded."},
    },
)
async def forecast(
    body: ForecastRequest, forecaster: ForecasterDep, settings: SettingsDep
) -> ForecastResponse:
    # Small requests take well under a millisecond, so they run on the event loop (a thread
    # hop would cost more than the work); large ones go to the thread pool so the loop keeps
    # serving other requests meanwhile.
    if len(body.series) <= settings.inline_batch_max:
        forecasts = run_forecast(body, forecaster, settings)
    else:
        forecasts = await run_in_threadpool(run_forecast, body, forecaster, settings)
    return ForecastResponse(forecasts=forecasts)
