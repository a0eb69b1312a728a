"""The forecast log's writer on a real PostgreSQL: rows it could not write now are kept for
the next flush, not dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, create_engine, text

from service.db import migrate, repository
from service.db.session import build_sessionmaker
from service.forecast_log import ForecastRecorder
from tests.conftest import fresh_database


@pytest.fixture(autouse=True)
def _empty_tables_after_each_test() -> None:
    """This test brings its own database: nothing shared to empty, and no reason to run once
    per database kind."""


def log_row(series_id: str, issued_at: datetime, value: float = 1.0) -> dict[str, object]:
    return {
        "series_id": series_id,
        "series_created_at": datetime(2000, 1, 1, tzinfo=UTC),
        "model_name": "m",
        "model_version": "1",
        "issued_at": issued_at,
        "horizon": 1,
        "target_ts": ["2000-01-01"],
        "values": [value],
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
            recorder.add([log_row("s", datetime.now(UTC), value) for value in (1.0, 2.0, 3.0)])
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


def generic_plan(connection: Connection, query: str) -> str:
    """EXPLAIN of ``query`` (one parameter: an array of ids) as PostgreSQL plans it once a
    prepared statement goes generic (forced by the caller's plan_cache_mode)."""
    connection.exec_driver_sql(f"PREPARE q AS {query}")
    plan = connection.exec_driver_sql("EXPLAIN EXECUTE q(CAST(ARRAY['s1', 's2'] AS varchar[]))")
    lines = "\n".join(plan.scalars())
    connection.exec_driver_sql("DEALLOCATE q")
    return lines


def test_series_are_found_by_id_with_a_join_not_an_array_filter_in_a_generic_plan(tmp_path):
    """Why the lookups by a list of ids are joins: repository.SERIES_BY_IDS. On 1,000 series
    the generic plan of ``id = ANY($1)`` is a scan comparing each row with every id."""
    with fresh_database("postgresql", tmp_path) as url:
        migrate.upgrade(url)
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO series (id, frequency) "
                        "SELECT 's' || i, 'MS' FROM generate_series(1, 1000) i"
                    )
                )
                connection.execute(text("ANALYZE series"))
            with engine.connect() as connection:
                connection.execute(text("SET plan_cache_mode = force_generic_plan"))
                plans = {
                    lock: generic_plan(
                        connection,
                        repository.SERIES_BY_IDS.format(columns="s.id", ids="$1", lock=lock),
                    )
                    for lock in ("", "FOR KEY SHARE OF s")
                }
                # The filter form, for contrast: its generic plan is the scan the join avoids.
                contrast = generic_plan(connection, "SELECT id FROM series WHERE id = ANY($1)")
        finally:
            engine.dispose()
    assert "Seq Scan on series" in contrast and "ANY" in contrast, contrast
    for lock, plan in plans.items():
        assert "ANY" not in plan and "Join" in plan, (lock, plan)


def test_the_last_logged_forecasts_are_remembered_for_the_most_recent_series_only(monkeypatch):
    monkeypatch.setattr(ForecastRecorder, "REMEMBERED_SERIES", 2)
    logged = ForecastRecorder(build_sessionmaker(create_engine("sqlite://")), 60, 1000).logged
    logged.update({"a": 1, "b": 2})
    logged["a"] = 3  # written again: now the most recent
    logged.update({"c": 4})
    assert dict(logged) == {"a": 3, "c": 4}
