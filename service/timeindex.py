"""Frequencies and timestamps (pandas offset aliases such as MS, QS, D, h, 15min)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

# Seasonal period per base alias: one year of months or quarters, one week of days,
# one day of hours. Used by seasonal naive and MASE on both sides.
_PERIODS = {"MS": 12, "ME": 12, "QS": 4, "QE": 4, "YS": 1, "YE": 1, "W": 52, "D": 7, "B": 5}
_PER_DAY = {"h": 24, "min": 24 * 60, "s": 24 * 3600}


def parse_frequency(freq: str) -> BaseOffset:
    """The pandas offset for an alias; ValueError names the alias when pandas rejects it."""
    try:
        return to_offset(freq)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown frequency {freq!r}; use a pandas offset alias such as MS, QS, D, h, 15min"
        ) from exc


def same_frequency(a: str, b: str) -> bool:
    return parse_frequency(a) == parse_frequency(b)


def seasonal_period(freq: str) -> int:
    offset = parse_frequency(freq)
    base = offset.name.split("-")[0]  # QS-JAN -> QS, W-SUN -> W
    if base in _PER_DAY:
        per_day, step = _PER_DAY[base], offset.n
        return per_day // step if per_day % step == 0 else 1
    return max(1, _PERIODS.get(base, 1) // max(1, offset.n))


def is_on_frequency(ts: datetime, offset: BaseOffset) -> bool:
    return bool(offset.is_on_offset(pd.Timestamp(ts)))


def future_index(
    start: datetime, n_history: int, horizon: int, offset: BaseOffset
) -> pd.DatetimeIndex:
    """Timestamps of the ``horizon`` steps after a history of ``n_history`` steps from ``start``."""
    first = pd.Timestamp(start) + offset * n_history
    return pd.date_range(start=first, periods=horizon, freq=offset)


def format_timestamps(index: pd.DatetimeIndex) -> list[str]:
    """ISO 8601; dates alone when every timestamp is midnight (monthly data reads 1961-01-01)."""
    if (index == index.normalize()).all():
        return [ts.date().isoformat() for ts in index]
    return [ts.isoformat() for ts in index]
