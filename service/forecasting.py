"""From a validated request to forecasts: check it against the model, batch, infer, label.

The steps are separate so that the route can run the inference (the only CPU-heavy part)
off the event loop when the batch is large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.config import Settings
from service.errors import (
    FrequencyNotServed,
    HistoryTooShort,
    HorizonTooLong,
    InvalidInput,
    LimitExceeded,
    UnknownFrequency,
)
from service.inference import Forecaster
from service.schemas import ForecastRequest, ModelRef, SeriesForecast
from service.timeindex import (
    format_timestamps,
    future_index,
    is_on_frequency,
    parse_frequency,
    same_frequency,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs for one request: windows (B, L) and each series' future timestamps."""

    ids: list[str]
    windows: np.ndarray
    future: list[pd.DatetimeIndex]
    horizon: int


def prepare(request: ForecastRequest, forecaster: Forecaster, settings: Settings) -> PreparedBatch:
    """Check every series against the model and limits; raise the first problem found."""
    m = forecaster.manifest
    if len(request.series) > settings.max_series_per_request:
        raise LimitExceeded(
            f"{len(request.series)} series in one request; the limit is "
            f"{settings.max_series_per_request} (FORECAST_MAX_SERIES_PER_REQUEST)",
            ("body", "series"),
        )
    if request.horizon > m.horizon:
        raise HorizonTooLong(
            f"horizon {request.horizon} exceeds model {m.name!r}'s horizon of {m.horizon}",
            ("body", "horizon"),
        )
    windows = np.empty((len(request.series), m.input_size), dtype=np.float32)  # (B, L)
    future = []
    for i, series in enumerate(request.series):
        loc = ("body", "series", i)
        freq = series.freq or m.frequency
        if freq is None:
            raise InvalidInput("freq is required: the model has no fixed frequency", (*loc, "freq"))
        try:
            offset = parse_frequency(freq)
        except ValueError as exc:
            raise UnknownFrequency(str(exc), (*loc, "freq")) from exc
        if m.frequency is not None and not same_frequency(freq, m.frequency):
            raise FrequencyNotServed(
                f"frequency {freq!r} is not served; model {m.name!r} serves {m.frequency!r}",
                (*loc, "freq"),
            )
        if not is_on_frequency(series.start, offset):
            raise InvalidInput(
                f"start {series.start.isoformat()} does not fall on frequency {freq!r}",
                (*loc, "start"),
            )
        n = len(series.history)
        if n > settings.max_history_length:
            raise LimitExceeded(
                f"history has {n} values; the limit is {settings.max_history_length} "
                "(FORECAST_MAX_HISTORY_LENGTH)",
                (*loc, "history"),
            )
        if n < m.input_size:
            raise HistoryTooShort(
                f"history has {n} values; model {m.name!r} needs at least {m.input_size}",
                (*loc, "history"),
            )
        window = series.history[-m.input_size :]
        if max(abs(v) for v in window) > FLOAT32_MAX:
            raise InvalidInput(
                f"history values must lie within +-{FLOAT32_MAX:.3e} (float32)", (*loc, "history")
            )
        windows[i] = window
        future.append(future_index(series.start, n, request.horizon, offset))
    return PreparedBatch(
        ids=[s.id for s in request.series], windows=windows, future=future, horizon=request.horizon
    )


def label(batch: PreparedBatch, forecaster: Forecaster, output: np.ndarray) -> list[SeriesForecast]:
    """Quantile output (B, H, Q) -> one point forecast per series, with its timestamps."""
    m = forecaster.manifest
    point = output[:, : batch.horizon, m.point_quantile_index]  # (B, horizon)
    bad = np.flatnonzero(~np.isfinite(point).all(axis=1))
    if bad.size:  # e.g. values near float32's limit overflow the window statistics
        raise InvalidInput(
            "the model produced non-finite forecasts; the history's values are out of the range "
            "it can scale",
            ("body", "series", int(bad[0]), "history"),
        )
    model = ModelRef(name=m.name, version=m.version)
    return [
        SeriesForecast(
            id=series_id,
            model=model,
            timestamps=format_timestamps(batch.future[i]),
            values=point[i].astype(float).tolist(),
        )
        for i, series_id in enumerate(batch.ids)
    ]


def run_forecast(
    request: ForecastRequest, forecaster: Forecaster, settings: Settings
) -> list[SeriesForecast]:
    """Validate, run one batched inference for every series, and label the result."""
    batch = prepare(request, forecaster, settings)
    return label(batch, forecaster, forecaster.predict(batch.windows))
