"""Calendar positions the service feeds to models that read the calendar, by hand."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from service.timeindex import calendar_covariate, season_position


@pytest.mark.parametrize(
    ("freq", "ts", "position", "covariate"),
    [
        ("MS", datetime(1961, 1, 1), 0, "month_of_year"),
        ("MS", datetime(1960, 12, 1), 11, "month_of_year"),
        ("ME", datetime(1960, 7, 31), 6, "month_of_year"),
        ("QS", datetime(1990, 7, 1), 2, "quarter_of_year"),
        ("QS-DEC", datetime(1990, 12, 1), 3, "quarter_of_year"),
        ("B", datetime(2024, 7, 19), 4, "day_of_week"),  # a Friday
        ("D", datetime(2024, 7, 15), 0, "day_of_week"),  # a Monday
        ("D", datetime(2024, 7, 21), 6, "day_of_week"),  # a Sunday
        ("h", datetime(2024, 7, 15, 14), 14, "hour_of_day"),
        ("15min", datetime(2024, 7, 15, 1, 30), 6, "minute_of_day"),
        ("2MS", datetime(2024, 7, 1), 3, "month_of_year"),  # 6 two-month periods a year
    ],
)
def test_season_position_by_hand(freq, ts, position, covariate):
    assert season_position(ts, freq) == position
    assert calendar_covariate(freq) == covariate


@pytest.mark.parametrize("freq", ["YS", "W", "W-MON", "5MS", "2D"])
def test_no_calendar_covariate_where_positions_do_not_step_by_one(freq):
    """No period (YS), 52- and 53-week years (W), steps that don't divide the period."""
    assert calendar_covariate(freq) is None


@pytest.mark.parametrize("freq", ["MS", "2MS", "QS-FEB", "D", "B", "h", "3h", "15min"])
def test_positions_step_by_one_where_there_is_a_covariate(freq):
    """What training counts from a series' start is what the service reads off timestamps."""
    from service.timeindex import parse_frequency, seasonal_period

    stamps = pd.date_range("2019-12-30", periods=800, freq=parse_frequency(freq))
    first = season_position(stamps[0].to_pydatetime(), freq)
    period = seasonal_period(freq)
    for i, ts in enumerate(stamps):
        assert season_position(ts.to_pydatetime(), freq) == (first + i) % period, (freq, ts)
