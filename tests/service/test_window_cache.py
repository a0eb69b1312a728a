"""The stored-window cache: never serves a window older than an acknowledged change.

Two api processes' worth of apps share one PostgreSQL database, as replicas do: a change made
through one reaches the other's cache by LISTEN/NOTIFY.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from service.config import Settings
from service.db import migrate
from service.db.repository import StoredWindow
from service.window_cache import WindowCache
from tests.conftest import ADMIN_TOKEN, AIR_CSV, MODELS, fresh_database, store_series


def window(sid: str, n: int) -> StoredWindow:
    ts = [datetime(2000 + i // 12, i % 12 + 1, 1) for i in range(n)]
    return StoredWindow(sid, "MS", datetime(2000, 1, 1), ts, np.arange(n, dtype=np.float64))


def test_a_window_counts_its_latest_observations_with_none_missing():
    """What the forecast path checks a model's input window against, once per window."""
    full = window("s", 12)
    assert full.consecutive == 12
    april_missing = StoredWindow("s", "MS", full.created_at, full.ts[:3] + full.ts[4:], np.ones(11))
    assert april_missing.consecutive == 8  # May to December
    mid_month = [*full.ts[:-1], datetime(2000, 12, 15)]
    assert StoredWindow("s", "MS", full.created_at, mid_month, np.ones(12)).consecutive == 0
    assert StoredWindow("s", "MS", full.created_at, [], np.ones(0)).consecutive == 0


def test_a_read_that_raced_a_change_is_not_cached():
    cache = WindowCache(max_series=2)
    assert cache.get(["a"], 24) == ({}, ["a"])  # off until the listener is connected
    cache.fill({"a": window("a", 24)}, 24, cache.begin_read())
    assert cache.get(["a"], 24) == ({}, ["a"])
    cache.set_enabled(True)
    cache.confirm_alive(60)  # the listener's connection answered
    started = cache.begin_read()
    cache.invalidate("a")  # committed while the read was under way
    cache.fill({"a": window("a", 24), "b": window("b", 24)}, 24, started)
    hits, missing = cache.get(["a", "b"], 24)
    assert list(hits) == ["b"] and missing == ["a"]
    # A window read at a smaller size can't answer a larger one, unless it is the whole series.
    cache.fill({"c": window("c", 30)}, 30, cache.begin_read())
    assert cache.get(["c"], 60) == ({}, ["c"])
    short = window("d", 10)
    cache.fill({"d": short}, 60, cache.begin_read())
    assert cache.get(["d"], 60)[0] == {"d": short}
    assert len(cache) <= 2  # least recently used out
    cache.confirm_alive(-1)  # no proof of life lately: the connection may be dead
    assert cache.get(["d"], 60) == ({}, ["d"])
    cache.set_enabled(False)
    assert len(cache) == 0 and cache.get(["d"], 60) == ({}, ["d"])


def test_a_read_begun_after_the_latest_change_is_cached():
    """The series changed last is cached like the others: only a change stamped after its
    read began makes a fill stale (it was refused once, so the series uploaded last, often
    the next one asked for, went to the database on every request)."""
    cache = WindowCache(max_series=10)
    cache.set_enabled(True)
    cache.confirm_alive(60)
    cache.invalidate("a")
    cache.invalidate("b")  # the latest change of all
    cache.fill({"a": window("a", 24), "b": window("b", 24)}, 24, cache.begin_read())
    hits, missing = cache.get(["a", "b"], 24)
    assert sorted(hits) == ["a", "b"] and missing == []
    started = cache.begin_read()
    cache.invalidate("b")  # during the next read: that fill of b is stale, a's is not
    cache.fill({"a": window("a", 24), "b": window("b", 24)}, 24, started)
    assert cache.get(["a", "b"], 24)[1] == ["b"]
    # Past MAX_TRACKED_CHANGES the stamps are forgotten: reads begun before are refused,
    # and one begun after is cached (not refused until some other series changes).
    cache.MAX_TRACKED_CHANGES = 2
    before = cache.begin_read()
    cache.invalidate("c")  # the third stamp: all are forgotten
    cache.fill({"c": window("c", 24)}, 24, before)
    assert cache.get(["c"], 24)[1] == ["c"]
    cache.fill({"c": window("c", 24)}, 24, cache.begin_read())
    assert cache.get(["c"], 24)[1] == []


@pytest.fixture(autouse=True)
def _empty_tables_after_each_test() -> None:
    """These tests bring their own database (postgres_url): nothing shared to empty, and no
    reason to run once per database kind."""


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    with fresh_database("postgresql", tmp_path) as url:
        migrate.upgrade(url)
        yield url


def replica_settings(url: str) -> Settings:
    return Settings(
        models_dir=MODELS,
        default_models={"MS": "air_passengers"},
        database_url=url,
        admin_token=ADMIN_TOKEN,
        registry_poll_s=0,
    )


def first_step(client: httpx.Client) -> str:
    response = client.post("/forecast", json={"series": [{"id": "air"}], "horizon": 1})
    assert response.status_code == 200, response.text
    return response.json()["forecasts"][0]["timestamps"][0]


def wait_until_listening(client: httpx.Client) -> None:
    """Both replicas cache (their listeners are up) before the test starts changing data."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        first_step(client)
        text_ = client.get("/metrics").text
        if "forecast_series_cache_listening 1.0" in text_:
            return
        time.sleep(0.1)
    raise AssertionError("the window cache listener did not connect")


def test_changes_reach_every_replica_and_the_writer_at_once(make_client, postgres_url):
    a = make_client(replica_settings(postgres_url))
    b = make_client(replica_settings(postgres_url))
    frame = pd.read_csv(AIR_CSV)
    store_series(str(a.base_url), "air", frame.iloc[:120])  # up to December 1958
    for replica in (a, b):
        wait_until_listening(replica)
        assert first_step(replica) == "1959-01-01"  # cached now
    # The next year, uploaded through a: a answers from it at once (its own change), b once
    # the notification arrives.
    store_series(str(a.base_url), "air", frame.iloc[120:132])
    assert first_step(a) == "1960-01-01"
    deadline = time.monotonic() + 5
    while first_step(b) != "1960-01-01":
        assert time.monotonic() < deadline, "replica b still serves the old window"
        time.sleep(0.01)
    # A deletion is a change too.
    assert a.delete("/series/air").status_code == 204
    deadline = time.monotonic() + 5
    while b.post("/forecast", json={"series": [{"id": "air"}], "horizon": 1}).status_code != 404:
        assert time.monotonic() < deadline, "replica b still serves a deleted series"
        time.sleep(0.01)


def test_a_lost_listener_connection_empties_the_cache_until_it_is_back(make_client, postgres_url):
    a = make_client(replica_settings(postgres_url))
    b = make_client(replica_settings(postgres_url))
    frame = pd.read_csv(AIR_CSV)
    store_series(str(a.base_url), "air", frame.iloc[:120])
    wait_until_listening(b)
    assert first_step(b) == "1959-01-01"
    engine = create_engine(postgres_url)
    with engine.begin() as connection:  # drop every listener's connection, as a failover would
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() "
                "AND application_name = 'forecast-series-listener'"
            )
        ).scalar_one()
    engine.dispose()
    assert killed == 2
    # A change made while b's listener is gone: notifications sent now reach nobody.
    store_series(str(a.base_url), "air", frame.iloc[120:132])
    # b notices the lost connection within its poll (1 s), empties its cache and reads the
    # database until it listens again.
    deadline = time.monotonic() + 5
    while first_step(b) != "1960-01-01":
        assert time.monotonic() < deadline, "replica b kept a window it could not verify"
        time.sleep(0.05)
    wait_until_listening(b)
    assert first_step(b) == "1960-01-01"
