"""The scheduler's cron times: five fields, or six with seconds first (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.scheduler import cron_weekdays, trigger


def test_five_field_cron_is_minute_hour_day_month_weekday():
    monday_3am = trigger("0 3 * * 1").get_next_fire_time(None, datetime(2026, 11, 24, tzinfo=UTC))
    assert monday_3am == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # the next Monday


def test_six_field_cron_has_seconds_first():
    after = datetime(2026, 11, 24, 12, 0, 1, tzinfo=UTC)
    assert trigger("*/3 * * * * *").get_next_fire_time(None, after) == datetime(
        2026, 11, 24, 12, 0, 3, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("sat,sun", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("*", "*"),
    ],
)
def test_weekdays_are_numbered_as_cron_numbers_them(field, days):
    assert cron_weekdays(field) == days
