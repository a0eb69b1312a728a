"""From a validated request to forecasts: check it against the model, batch, infer, label.

The steps are separate so that the route can run the inference (the only CPU-heavy part)
off the event loop when the batch is large.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import repository
from service.db.repository import StoredWindow
from service.errors import (
    FrequencyNotServed,
    HistoryGap,
    HistoryTooShort,
    HorizonTooLong,
    InvalidInput,
    LimitExceeded,
    Loc,
    SeriesNotFound,
    UnknownFrequency,
)
from service.inference import Forecaster
from service.schemas import ForecastRequest, ModelRef, SeriesForecast, SeriesInput
from service.timeindex import (
    format_timestamps,
    future_labels,
    is_on_frequency,
    parse_frequency,
    same_frequency,
    step_from,
    window_index,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs for one request: windows (B, L) and each series' future timestamps."""

    ids: list[str]
    windows: np.ndarray
    future: list[tuple[str, ...]]  # per series: the labels of the forecast timestamps
    horizon: int


def prepare(
    request: ForecastRequest,
    forecaster: Forecaster,
    settings: Settings,
    stored: dict[str, StoredWindow] | None = None,
) -> PreparedBatch:
    """Check every series against the model and limits; raise the first problem found.

    ``stored`` holds the latest windows of the request's stored series (by id).
    """
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
        if series.is_stored:
            window, index = _stored_window(
                (stored or {})[series.id], forecaster, request.horizon, loc
            )
        else:
            window, index = _inline_window(series, forecaster, settings, request.horizon, loc)
        if max(abs(v) for v in window) > FLOAT32_MAX:
            raise InvalidInput(
                f"history values must lie within +-{FLOAT32_MAX:.3e} (float32)", (*loc, "history")
            )
        windows[i] = window
        future.append(index)
    return PreparedBatch(
        ids=[s.id for s in request.series], windows=windows, future=future, horizon=request.horizon
    )


def _served_frequency(freq: str | None, forecaster: Forecaster, loc: Loc) -> str:
    """The series' frequency (default: the model's), once checked that the model serves it."""
    m = forecaster.manifest
    freq = freq or m.frequency
    if freq is None:
        raise InvalidInput("freq is required: the model has no fixed frequency", loc)
    try:
        parse_frequency(freq)
    except ValueError as exc:
        raise UnknownFrequency(str(exc), loc) from exc
    if m.frequency is not None and not same_frequency(freq, m.frequency):
        raise FrequencyNotServed(
            f"frequency {freq!r} is not served; model {m.name!r} serves {m.frequency!r}", loc
        )
    return freq


def _inline_window(
    series: SeriesInput, forecaster: Forecaster, settings: Settings, horizon: int, loc: Loc
) -> tuple[list[float], tuple[str, ...]]:
    m = forecaster.manifest
    history, start = series.history or [], series.start
    assert start is not None  # SeriesInput guarantees it for inline series
    freq = _served_frequency(series.freq, forecaster, (*loc, "freq"))
    if not is_on_frequency(start, parse_frequency(freq)):
        raise InvalidInput(
            f"start {start.isoformat()} does not fall on frequency {freq!r}", (*loc, "start")
        )
    n = len(history)
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
    return history[-m.input_size :], future_labels(step_from(start, n - 1, freq), horizon, freq)


def _stored_window(
    stored: StoredWindow, forecaster: Forecaster, horizon: int, loc: Loc
) -> tuple[list[float], tuple[str, ...]]:
    m = forecaster.manifest
    freq = _served_frequency(stored.frequency, forecaster, (*loc, "id"))
    n = len(stored.values)
    if n < m.input_size:
        raise HistoryTooShort(
            f"stored series {stored.series_id!r} has {n} observations; model {m.name!r} needs "
            f"at least {m.input_size}",
            (*loc, "id"),
        )
    # The window must be the last L periods with none missing: a gap would shift every value
    # after it by one period and the forecast would be silently wrong.
    expected = window_index(stored.ts[-1], m.input_size, freq)
    if tuple(stored.ts) != expected:
        present = set(stored.ts)
        missing = [t for t in expected if t not in present]
        raise HistoryGap(
            f"stored series {stored.series_id!r} has no observation at "
            f"{format_timestamps(missing[:1])[0]} ({len(missing)} missing) within the model's "
            f"input window: the last {m.input_size} periods up to "
            f"{format_timestamps([expected[-1]])[0]}; upload them, then ask again",
            (*loc, "id"),
        )
    return stored.values, future_labels(stored.ts[-1], horizon, freq)


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
            timestamps=list(batch.future[i]),
            values=point[i].astype(float).tolist(),
        )
        for i, series_id in enumerate(batch.ids)
    ]


def run_forecast(
    request: ForecastRequest,
    forecaster: Forecaster,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> list[SeriesForecast]:
    """Validate, run one batched inference for every series, and label the result.

    Stored series are read in one query, and their forecasts are logged before the response
    goes out. Runs synchronously: the route calls it in a worker thread when it touches the
    database or the batch is large.
    """
    stored_ids = [s.id for s in request.series if s.is_stored]
    if not stored_ids:
        batch = prepare(request, forecaster, settings)
        return label(batch, forecaster, forecaster.predict(batch.windows))
    with sessions() as session:
        try:
            stored = repository.latest_windows(
                session, series_ids=stored_ids, size=forecaster.manifest.input_size
            )
        except SeriesNotFound as exc:
            index = next(i for i, s in enumerate(request.series) if s.id == exc.series_id)
            raise SeriesNotFound(exc.series_id, ("body", "series", index, "id")) from None
        batch = prepare(request, forecaster, settings, stored)
        forecasts = label(batch, forecaster, forecaster.predict(batch.windows))
        m = forecaster.manifest
        repository.record_forecasts(
            session,
            rows=[
                {
                    "series_id": f.id,
                    "model_name": m.name,
                    "model_version": m.version,
                    "issued_at": datetime.now(UTC),
                    "horizon": batch.horizon,
                    "target_ts": f.timestamps,
                    "values": f.values,
                }
                for f, series in zip(forecasts, request.series, strict=True)
                if series.is_stored
            ],
        )
    return forecasts
