"""Calendar positions the service feeds to models that read the calendar, by hand."""

from __future__ import annotations

from datetime import datetime

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


def test_frequencies_without_a_seasonal_period_have_no_calendar_covariate():
    assert calendar_covariate("YS") is None
    assert season_position(datetime(2024, 7, 1), "YS") == 0
