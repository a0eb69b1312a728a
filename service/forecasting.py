"""From a validated request to forecasts: route each series to a model, check it, batch,
infer, label.

Each series gets a plan (which model, which values, which timestamps, model or fallback);
then every model runs one batched inference over its series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.baselines import seasonal_naive
from service.config import Settings
from service.db import repository
from service.db.repository import StoredWindow
from service.errors import (
    HistoryGap,
    HistoryTooShort,
    HorizonTooLong,
    InvalidInput,
    LimitExceeded,
    Loc,
    QuantileNotServed,
    SeriesNotFound,
    UnknownFrequency,
)
from service.inference import Forecaster, ModelRows, input_arrays, model_rows
from service.model_set import ModelSet
from service.schemas import (
    ForecastRequest,
    ModelRefData,
    SeriesForecast,
    SeriesForecastData,
    SeriesInput,
)
from service.timeindex import (
    format_timestamps,
    future_labels,
    is_on_frequency,
    parse_frequency,
    same_frequency,
    season_position,
    step_from,
    window_index,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(slots=True)  # not frozen: built once per series, in an eighth of the time
class Plan:
    """How one series of the request is answered."""

    index: int
    series_id: str
    forecaster: Forecaster
    values: Sequence[float] | np.ndarray  # the history read (at most the model's window)
    labels: tuple[str, ...]  # timestamps of the forecast steps
    fallback: str | None  # None: the model; else "seasonal_naive" or "naive"
    stored: bool
    position: int = 0  # the first forecast step's calendar position (calendar models only)


def check_series_count(request: ForecastRequest, settings: Settings) -> None:
    if len(request.series) > settings.max_series_per_request:
        raise LimitExceeded(
            f"{len(request.series)} series in one request; the limit is "
            f"{settings.max_series_per_request} (FORECAST_MAX_SERIES_PER_REQUEST)",
            ("body", "series"),
        )


def plan_request(
    request: ForecastRequest,
    models: ModelSet,
    settings: Settings,
    stored: dict[str, StoredWindow] | None = None,
) -> list[Plan]:
    """Route and check every series; raise the first problem found (its loc names it)."""
    check_series_count(request, settings)
    named = models.named(request.model, ("body", "model")) if request.model else None
    route = _Router(request, models, named)
    plans = []
    for i, series in enumerate(request.series):
        loc: Loc = ("body", "series", i)
        if series.is_stored:
            window = (stored or {})[series.id]
            plans.append(_plan_stored(i, window, request, route, loc))
        else:
            plans.append(_plan_inline(i, series, request, route, settings, loc))
    return plans


class _Router:
    """A request's ``_route``, once per frequency: the answer depends on nothing else of the
    series, so a request of 1,000 series of one frequency routes once (a refusal is raised
    at the first series of that frequency, so its loc names it)."""

    def __init__(self, request: ForecastRequest, models: ModelSet, named: Forecaster | None):
        self.request, self.models, self.named = request, models, named
        self.routes: dict[str | None, tuple[Forecaster, str]] = {}
        self.endings: dict[tuple[str, datetime], _Ending] = {}

    def __call__(self, freq: str | None, loc: Loc) -> tuple[Forecaster, str]:
        found = self.routes.get(freq)
        if found is None:
            found = self.routes[freq] = _route(freq, self.request, self.models, self.named, loc)
        return found

    def ending(self, freq: str, last: datetime, loc: Loc) -> _Ending:
        """The route of stored series of ``freq`` that end at ``last``, and their forecast's
        labels and calendar position: once per end date (stored series mostly share a few),
        which took the planning of 1,000 stored series from 2.8 to 1.9 ms."""
        found = self.endings.get((freq, last))
        if found is None:
            forecaster, served = self(freq, loc)
            found = self.endings[(freq, last)] = _Ending(
                forecaster,
                served,
                future_labels(last, self.request.horizon, served),
                _position(forecaster, last, served),
            )
        return found


class _Ending(NamedTuple):
    forecaster: Forecaster
    freq: str
    labels: tuple[str, ...]
    position: int


def _route(
    freq: str | None, request: ForecastRequest, models: ModelSet, named: Forecaster | None, loc: Loc
) -> tuple[Forecaster, str]:
    """The model for a series of frequency ``freq`` (checked), and that frequency."""
    freq = freq or (named.manifest.frequency if named else None)
    if freq is None:
        raise InvalidInput(
            f"freq is required (the models serve {models.served_frequencies}), or name a model",
            loc,
        )
    try:
        parse_frequency(freq)
    except ValueError as exc:
        raise UnknownFrequency(str(exc), loc) from exc
    forecaster = named or models.for_frequency(freq, loc)
    m = forecaster.manifest
    if m.frequency is not None and not same_frequency(freq, m.frequency):
        raise UnknownFrequency(
            f"frequency {freq!r} is not served by model {m.name!r}, which serves {m.frequency!r}",
            loc,
        )
    if request.horizon > m.horizon:
        raise HorizonTooLong(
            f"horizon {request.horizon} exceeds model {m.name!r}'s horizon of {m.horizon}",
            ("body", "horizon"),
        )
    for q in request.requested_quantiles():
        if not any(math.isclose(q, have, abs_tol=1e-9) for have in m.quantiles):
            raise QuantileNotServed(
                f"quantile {q:g} is not served by model {m.name!r}; it has {m.quantiles}",
                (
                    "body",
                    "level"
                    if request.level and q not in (request.quantiles or [])
                    else "quantiles",
                ),
            )
    return forecaster, freq


def _fallback(n: int, forecaster: Forecaster, strict: bool, what: str, loc: Loc) -> str | None:
    """None when the model can read the history, else the baseline that answers instead."""
    m = forecaster.manifest
    if n >= m.input_size:
        return None
    if strict:
        raise HistoryTooShort(
            f"{what} has {n} values; model {m.name!r} needs at least {m.input_size} "
            "(strict mode; without it a seasonal-naive forecast answers)",
            loc,
        )
    return "seasonal_naive" if n >= m.seasonal_period else "naive"


def check_windows(group: list[Plan], windows: np.ndarray) -> None:
    """The model inputs (B, L) of one model's plans, checked at once: finite in float32, and
    positive for models that take logs. The first bad row is named by its place."""
    forecaster = group[0].forecaster
    if forecaster.accepts(windows):
        return
    m = forecaster.manifest
    finite = np.isfinite(windows).all(axis=1)  # values beyond float32's range became inf
    positive = (windows > 0).all(axis=1) if m.input_domain == "positive" else finite
    bad = np.flatnonzero(~(finite & positive))
    if not bad.size:
        return
    plan = group[int(bad[0])]
    loc: Loc = ("body", "series", plan.index, "id" if plan.stored else "history")
    if not finite[bad[0]]:
        raise InvalidInput(f"history values must lie within +-{FLOAT32_MAX:.3e} (float32)", loc)
    raise InvalidInput(
        f"model {m.name!r} works on logs and needs values > 0 in its input window; "
        f"got {min(plan.values):g}",
        loc,
    )


def _plan_inline(
    index: int,
    series: SeriesInput,
    request: ForecastRequest,
    route: _Router,
    settings: Settings,
    loc: Loc,
) -> Plan:
    history, start = series.history or [], series.start
    assert start is not None  # SeriesInput guarantees it for inline series
    forecaster, freq = route(series.freq, (*loc, "freq"))
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
    fallback = _fallback(n, forecaster, request.strict, "history", (*loc, "history"))
    values = history[-forecaster.manifest.input_size :]
    last = step_from(start, n - 1, freq)
    labels = future_labels(last, request.horizon, freq)
    position = _position(forecaster, last, freq)
    return Plan(index, series.id, forecaster, values, labels, fallback, False, position)


def _plan_stored(
    index: int,
    window: StoredWindow,
    request: ForecastRequest,
    route: _Router,
    loc: Loc,
) -> Plan:
    n = len(window.values)
    if n == 0:
        route(window.frequency, (*loc, "id"))  # a frequency no model serves is named first
        raise HistoryTooShort(
            f"stored series {window.series_id!r} has no observations", (*loc, "id")
        )
    last = window.ts[-1]
    forecaster, freq, labels, position = route.ending(window.frequency, last, (*loc, "id"))
    input_size = forecaster.manifest.input_size
    fallback = None  # the model reads the series (most do: nothing to work out)
    if n < input_size:
        what = f"stored series {window.series_id!r}"
        fallback = _fallback(n, forecaster, request.strict, what, (*loc, "id"))
    # The window (read at the largest input size of all models) cut to this model's, and
    # checked: consecutive periods with none missing. A gap would shift every value after it
    # by one period and the forecast would be silently wrong.
    size = min(n, input_size)
    if window.consecutive < size:
        expected = window_index(last, size, freq)
        present = set(window.ts[-size:])
        missing = [t for t in expected if t not in present]
        raise HistoryGap(
            f"stored series {window.series_id!r} has no observation at "
            f"{format_timestamps(missing[:1])[0]} "
            f"({len(missing)} missing) within the model's input window: the last "
            f"{input_size} periods up to "
            f"{format_timestamps([expected[-1]])[0]}; upload them, then ask again",
            (*loc, "id"),
        )
    values = window.values[-size:]
    return Plan(index, window.series_id, forecaster, values, labels, fallback, True, position)


def _position(forecaster: Forecaster, last: datetime, freq: str) -> int:
    """Calendar position of the step after ``last``, for models that read the calendar."""
    if not forecaster.manifest.covariates:
        return 0
    return season_position(step_from(last, 1, freq), freq)


def infer(plans: list[Plan], request: ForecastRequest) -> list[SeriesForecast]:
    """Synchronously: one session call per model over its series (batch jobs, tests)."""
    groups = by_model(plans)
    outputs = [model_rows(group[0].forecaster.predict(*model_inputs(group))) for group in groups]
    return [SeriesForecast.model_validate(f) for f in assemble(plans, groups, outputs, request)]


def by_model(plans: list[Plan]) -> list[list[Plan]]:
    """The plans the models answer, one group per model (fallbacks are left out)."""
    groups: dict[str, list[Plan]] = {}
    for plan in plans:
        if plan.fallback is None:
            groups.setdefault(plan.forecaster.manifest.name, []).append(plan)
    return list(groups.values())


def model_inputs(group: list[Plan]) -> tuple[np.ndarray, np.ndarray]:
    """Windows (B, L) and calendar positions (B,) of one model's plans, checked."""
    windows, positions = input_arrays([p.values for p in group], [p.position for p in group])
    check_windows(group, windows)
    return windows, positions


def assemble(
    plans: list[Plan],
    groups: list[list[Plan]],
    outputs: list[ModelRows],
    request: ForecastRequest,
) -> list[SeriesForecastData]:
    """Label the model outputs (one ModelRows per group) and answer the fallbacks with their
    baseline."""
    results: list[SeriesForecastData | None] = [None] * len(plans)
    horizon, wanted = request.horizon, request.requested_quantiles()
    for plan in plans:
        if plan.fallback is not None:
            m = plan.forecaster.manifest
            values = seasonal_naive(
                np.asarray(plan.values, dtype=np.float64), horizon, m.seasonal_period
            )
            results[plan.index] = {
                "id": plan.series_id,
                "method": plan.fallback,
                "model": None,
                "timestamps": plan.labels,
                "values": values.tolist(),
                "quantiles": None,
            }
    for group, rows in zip(groups, outputs, strict=True):
        m = group[0].forecaster.manifest
        if not rows.finite:  # e.g. values near float32's limit overflow
            _check_finite(group, rows, horizon)
        columns = {f"{q:g}": _quantile_index(m.quantiles, q) for q in wanted}
        model: ModelRefData = {"name": m.name, "version": m.version}  # the manifest's own
        point = rows.values[m.point_quantile_index]  # B lists of the model's horizon
        bands = {k: rows.values[c] for k, c in columns.items()}
        for row, plan in enumerate(group):
            results[plan.index] = {
                "id": plan.series_id,
                "method": "model",
                "model": model,
                "timestamps": plan.labels,
                "values": point[row][:horizon],
                "quantiles": {k: band[row][:horizon] for k, band in bands.items()}
                if wanted
                else None,
            }
    return [r for r in results if r is not None]


def _check_finite(group: list[Plan], rows: ModelRows, horizon: int) -> None:
    """Refuse the first series whose forecast, up to the request's horizon, is not finite: the
    model could not scale its history."""
    for row, plan in enumerate(group):
        if not all(math.isfinite(v) for q in rows.values for v in q[row][:horizon]):
            raise InvalidInput(
                "the model produced non-finite forecasts; the history's values are out of the "
                "range it can scale",
                ("body", "series", plan.index, "history"),
            )


def _quantile_index(quantiles: list[float], q: float) -> int:
    return next(i for i, have in enumerate(quantiles) if math.isclose(q, have, abs_tol=1e-9))


def read_windows(
    request: ForecastRequest, series_ids: list[str], size: int, sessions: sessionmaker[Session]
) -> dict[str, StoredWindow]:
    """The latest ``size`` observations of these stored series of the request (run in a
    worker thread); an unknown id is reported at its place in the request."""
    with sessions() as session:
        try:
            return repository.latest_windows(session, series_ids=series_ids, size=size)
        except SeriesNotFound as exc:
            index = next(i for i, s in enumerate(request.series) if s.id == exc.series_id)
            raise SeriesNotFound(exc.series_id, ("body", "series", index, "id")) from None


def log_rows(
    forecasts: list[SeriesForecastData],
    plans: list[Plan],
    horizon: int,
    issued_at: datetime,
    stored: dict[str, StoredWindow],
) -> list[dict[str, object]]:
    """Forecast log rows (ForecastLog's columns, and the series' creation time, which tells
    one series of an id from another) for the stored series among ``plans``; ``issued_at``:
    when the request began, before its windows were read."""
    return [
        {
            "series_id": f["id"],
            "series_created_at": stored[f["id"]].created_at,
            "model_name": model["name"] if (model := f["model"]) else f["method"],
            "model_version": model["version"] if model else "-",
            "issued_at": issued_at,
            "horizon": horizon,
            "target_ts": f["timestamps"],  # the labels' tuple, shared by series that end together
            "values": f["values"],
        }
        for f, plan in zip(forecasts, plans, strict=True)
        if plan.stored
    ]
