"""The forecast log's writer on a real PostgreSQL: rows it could not write now are kept for
the next flush, not dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from service.db import migrate, repository
from service.db.session import build_sessionmaker
from service.forecast_log import ForecastRecorder
from tests.conftest import fresh_database


@pytest.fixture(autouse=True)
def _empty_tables_after_each_test() -> None:
    """This test brings its own database: nothing shared to empty, and no reason to run once
    per database kind."""


def log_row(series_id: str, issued_at: datetime) -> dict[str, object]:
    return {
        "series_id": series_id,
        "model_name": "m",
        "model_version": "1",
        "issued_at": issued_at,
        "horizon": 1,
        "target_ts": ["2000-01-01"],
        "values": [1.0],
    }


def test_rows_wait_for_the_next_flush_when_the_series_check_times_out(tmp_path):
    """The series check locks the rows' series (FOR KEY SHARE): while another transaction
    holds one FOR UPDATE past the lock timeout, psycopg's LockNotAvailable must count as
    "try again", as a lost connection does."""
    with fresh_database("postgresql", tmp_path) as url:
        migrate.upgrade(url)
        engine = create_engine(url, connect_args={"options": "-c lock_timeout=200"})
        sessions = build_sessionmaker(engine)
        dropped: list[int] = []
        try:
            with sessions() as session:
                repository.put_series(session, series_id="s", frequency="MS", description=None)
            recorder = ForecastRecorder(sessions, 60, 1000, on_drop=dropped.append)
            recorder.add([log_row("s", datetime.now(UTC)) for _ in range(3)])
            with engine.connect() as holder:
                holder.execute(text("SELECT 1 FROM series WHERE id = 's' FOR UPDATE"))
                asyncio.run(recorder.flush())  # waits 200 ms for the lock, then gives up
                assert len(recorder.rows) == 3 and dropped == []
                holder.rollback()
            asyncio.run(recorder.flush())
            assert len(recorder.rows) == 0 and dropped == []
            with engine.connect() as connection:
                count = connection.execute(text("SELECT count(*) FROM forecasts")).scalar()
            assert count == 3
        finally:
            engine.dispose()
