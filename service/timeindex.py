"""Frequencies and timestamps (pandas offset aliases such as MS, QS, D, h, 15min).

The calendar work is cached: a batch of 1,000 series usually shares a handful of end dates,
and pandas' date arithmetic costs far more per call than the model does per series.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

# Seasonal period per base alias: one year of months or quarters, one week of days,
# one day of hours. Used by seasonal naive and MASE on both sides.
_PERIODS = {"MS": 12, "ME": 12, "QS": 4, "QE": 4, "YS": 1, "YE": 1, "W": 52, "D": 7, "B": 5}
_PER_DAY = {"h": 24, "min": 24 * 60, "s": 24 * 3600}


@lru_cache(maxsize=256)
def parse_frequency(freq: str) -> BaseOffset:
    """The pandas offset for an alias; ValueError names the alias when pandas rejects it."""
    try:
        return to_offset(freq)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown frequency {freq!r}; use a pandas offset alias such as MS, QS, D, h, 15min"
        ) from exc


def same_frequency(a: str, b: str) -> bool:
    return a == b or parse_frequency(a) == parse_frequency(b)


def seasonal_period(freq: str) -> int:
    offset = parse_frequency(freq)
    base = _base(offset)
    if base in _PER_DAY:
        per_day, step = _PER_DAY[base], offset.n
        return per_day // step if per_day % step == 0 else 1
    return max(1, _PERIODS.get(base, 1) // max(1, offset.n))


# Calendar covariates: where a timestamp falls within its seasonal period, by base alias:
# the covariate's name and the calendar index it counts in (before dividing by the offset's n).
_CALENDAR = {
    "MS": "month_of_year",
    "ME": "month_of_year",
    "QS": "quarter_of_year",
    "QE": "quarter_of_year",
    "D": "day_of_week",
    "B": "day_of_week",
    "h": "hour_of_day",
    "min": "minute_of_day",
    "s": "second_of_day",
}


def _base(offset: BaseOffset) -> str:
    return str(offset.name.split("-")[0])  # QS-JAN -> QS, W-SUN -> W


def calendar_covariate(freq: str) -> str | None:
    """The name of the calendar covariate for a frequency (``month_of_year`` for MS), or None
    when there is none: no seasonal period, or a calendar position that does not advance by
    exactly one per step (weeks: ISO years have 52 or 53; 5MS: 5 does not divide 12). Training
    counts positions from each series' start, the service reads them off timestamps, and the
    two agree only where every step advances the position by one."""
    offset = parse_frequency(freq)
    base = _base(offset)
    if seasonal_period(freq) <= 1 or base == "W":
        return None
    if base in _PERIODS and _PERIODS[base] % max(1, offset.n):
        return None
    return _CALENDAR.get(base)


@lru_cache(maxsize=65536)
def season_position(ts: datetime, freq: str) -> int:
    """Where ``ts`` falls within its seasonal period, 0 .. period - 1, from the calendar alone:
    January is 0 of 12 for MS, the third quarter 2 of 4 for QS, Monday 0 of 7 for D, 14:00 is
    14 of 24 for h. Series of one frequency then agree on what each position means, whatever
    their start."""
    offset, period = parse_frequency(freq), seasonal_period(freq)
    base = _base(offset)
    if base in ("MS", "ME"):
        index = ts.month - 1
    elif base in ("QS", "QE"):
        index = (ts.month - 1) // 3
    elif base == "W":
        index = ts.isocalendar()[1] - 1
    elif base in ("D", "B"):
        index = ts.weekday()
    else:  # within the day: h, min, s
        seconds = (ts.hour * 60 + ts.minute) * 60 + ts.second
        index = seconds // {"h": 3600, "min": 60}.get(base, 1)
    return (index // max(1, offset.n)) % period


@lru_cache(maxsize=65536)  # forecasts of the same series ask about the same start again
def is_on_frequency(ts: datetime, offset: BaseOffset) -> bool:
    return bool(offset.is_on_offset(pd.Timestamp(ts)))


@lru_cache(maxsize=65536)
def step_from(start: datetime, steps: int, freq: str) -> datetime:
    """The timestamp ``steps`` periods after ``start`` (negative: before)."""
    result: datetime = (pd.Timestamp(start) + parse_frequency(freq) * steps).to_pydatetime()
    return result


@lru_cache(maxsize=65536)
def window_index(last: datetime, size: int, freq: str) -> tuple[datetime, ...]:
    """The ``size`` consecutive timestamps ending at ``last``, oldest first."""
    index = pd.date_range(end=last, periods=size, freq=parse_frequency(freq))
    return tuple(index.to_pydatetime())


@lru_cache(maxsize=65536)
def future_labels(last: datetime, horizon: int, freq: str) -> tuple[str, ...]:
    """ISO labels of the ``horizon`` periods after ``last``.

    Dates alone when every timestamp is midnight (monthly data reads 1961-01-01), else full
    ISO 8601 timestamps.
    """
    offset = parse_frequency(freq)
    index = pd.date_range(start=pd.Timestamp(last) + offset, periods=horizon, freq=offset)
    return format_timestamps(list(index.to_pydatetime()))


def format_timestamps(stamps: list[datetime]) -> tuple[str, ...]:
    if all(t.hour == t.minute == t.second == t.microsecond == 0 for t in stamps):
        return tuple(t.date().isoformat() for t in stamps)
    return tuple(t.isoformat() for t in stamps)
