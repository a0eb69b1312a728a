"""Faults survived by the api process, on PostgreSQL: kill -9 during ingest, the database
stopped and started under load, SIGTERM under load. Each test prints what it measured."""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx
import pandas as pd
from sqlalchemy import create_engine, text

from tests.conftest import (
    ADMIN,
    AIR_CSV,
    READ,
    fresh_database,
    rss_mb,
    start_api_process,
    start_migrated_api,
    store_series,
)
from tests.reliability.conftest import Load, api_env

SERIES = [f"kill-{i}" for i in range(4)]
BATCH_ROWS = 250
HOUR = timedelta(hours=1)
T0 = datetime(2020, 1, 1)


def batches(rng: random.Random, count: int) -> Plan:
    """Disjoint hourly batches over the series, shuffled: each (series, ts) in exactly one."""
    plan = []
    for i in range(count):
        series = SERIES[i % len(SERIES)]
        first = T0 + (i // len(SERIES)) * BATCH_ROWS * HOUR
        rows = [
            {"ts": (first + k * HOUR).isoformat() + "Z", "value": round(rng.uniform(-1e3, 1e3), 3)}
            for k in range(BATCH_ROWS)
        ]
        plan.append((series, rows))
    rng.shuffle(plan)
    return plan


def stored_rows(url: str) -> dict[tuple[str, datetime], float]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT series_id, ts, value FROM observations")).all()
    engine.dispose()
    return {(s, ts.replace(tzinfo=None)): v for s, ts, v in rows}


Plan = list[tuple[str, list[dict[str, object]]]]


def batch_keys(plan: Plan, i: int) -> dict[tuple[str, datetime], float]:
    """Batch i's rows as stored: (series, naive UTC ts) -> value."""
    series, rows = plan[i]
    return {
        (series, datetime.fromisoformat(str(r["ts"]).removesuffix("Z"))): float(str(r["value"]))
        for r in rows
    }


def test_kill_9_during_ingest_loses_no_acknowledged_row_and_replay_is_exact(tmp_path):
    plan = batches(random.Random(8), 400)  # 100,000 rows
    with fresh_database("postgresql", tmp_path) as url:
        api, base = start_migrated_api(api_env(url))
        try:
            for series in SERIES:
                httpx.put(
                    f"{base}/series/{series}", json={"frequency": "h"}, headers=ADMIN
                ).raise_for_status()
            acknowledged: list[int] = []
            sent: list[int] = []
            lock = threading.Lock()
            cursor = iter(range(len(plan)))

            def ingest() -> None:
                with httpx.Client(base_url=base, headers=ADMIN, timeout=30) as client:
                    for i in cursor:
                        series, rows = plan[i]
                        with lock:
                            sent.append(i)
                        try:
                            r = client.post(f"/series/{series}/observations", json=rows)
                        except httpx.TransportError:
                            return  # the api is gone
                        if r.status_code == 200:
                            with lock:
                                acknowledged.append(i)

            threads = [threading.Thread(target=ingest) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while len(acknowledged) < 60:  # well into the stream
                assert time.monotonic() < deadline, f"only {len(acknowledged)} acknowledged"
                assert any(t.is_alive() for t in threads), "every ingest client stopped"
                time.sleep(0.01)
            api.send_signal(signal.SIGKILL)
            api.wait(timeout=10)
            for thread in threads:
                thread.join(timeout=30)
        finally:
            if api.poll() is None:
                api.kill()
        after_kill = stored_rows(url)
        unacknowledged = set(sent) - set(acknowledged)
        # Every acknowledged row is there, with its value.
        for i in acknowledged:
            expected = batch_keys(plan, i)
            assert all(after_kill.get(k) == v for k, v in expected.items()), f"batch {i} lost"
        # A batch in flight at the kill is there whole or not at all.
        partial = [
            i
            for i in unacknowledged
            if 0 < sum(k in after_kill for k in batch_keys(plan, i)) < BATCH_ROWS
        ]
        assert partial == [], f"half-written batches: {partial}"
        committed = sum(batch_keys(plan, i).keys() <= after_kill.keys() for i in unacknowledged)

        # Restart on the same database and replay every batch: exactly the distinct keys.
        api, base = start_api_process(api_env(url), tmp_path)
        try:
            with httpx.Client(base_url=base, headers=ADMIN, timeout=60) as client:
                for series, rows in plan:
                    client.post(f"/series/{series}/observations", json=rows).raise_for_status()
        finally:
            api.terminate()
            api.wait(timeout=30)
        replayed = stored_rows(url)
    everything = {k: v for i in range(len(plan)) for k, v in batch_keys(plan, i).items()}
    print(
        f"\nkill -9 after {len(acknowledged)} acknowledged batches of {BATCH_ROWS} rows "
        f"({len(acknowledged) * BATCH_ROWS} rows): all {len(acknowledged) * BATCH_ROWS} present; "
        f"{len(unacknowledged)} batches in flight, {committed} of them committed whole, "
        f"0 half-written; replay of {len(plan)} batches: {len(replayed)} rows for "
        f"{len(everything)} distinct keys"
    )
    assert replayed == everything


def test_database_stopped_under_load_gives_503s_then_recovers_without_a_restart(
    private_postgres, tmp_path
):
    admin = create_engine(private_postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE forecast"))
    admin.dispose()
    url = private_postgres.url.rsplit("/", 1)[0] + "/forecast"
    api, base = start_migrated_api(api_env(url))
    try:
        store_series(base, "air", pd.read_csv(AIR_CSV))
        calls = 0

        def read_or_write(client: httpx.Client) -> httpx.Response:
            nonlocal calls
            calls += 1
            if calls % 2:
                return client.get("/series/air")
            row = [{"ts": "1960-12-01", "value": 432.0}]
            return client.post("/series/air/observations", json=row)

        with Load(read_or_write, base, ADMIN, clients=4, timeout_s=15) as load:
            time.sleep(1.5)
            stopped = time.monotonic()
            private_postgres.stop()
            time.sleep(3)
            down = httpx.get(f"{base}/series/air", headers=ADMIN, timeout=15)
            ready = httpx.get(f"{base}/health/ready", timeout=15)
            started = time.monotonic()
            private_postgres.start()
            deadline = started + 30
            while not any(s == 200 and t0 > started for t0, _, s in load.outcomes):
                assert time.monotonic() < deadline, "no success within 30 s of the restart"
                time.sleep(0.05)
            recovered = min(t1 for t0, t1, s in load.outcomes if s == 200 and t0 > started)
            time.sleep(1.5)
    finally:
        api.terminate()
        api.wait(timeout=30)

    outcomes = list(load.outcomes)
    before = [s for t0, t1, s in outcomes if t1 < stopped]
    while_down = [s for t0, t1, s in outcomes if t0 > stopped + 0.5 and t1 < started]
    after = [s for t0, t1, s in outcomes if t0 > recovered]
    slowest = max(t1 - t0 for t0, t1, _ in outcomes)
    print(
        f"\n{len(outcomes)} requests: {len(before)} before the stop (all 200), "
        f"{len(while_down)} while down ({while_down.count(503)} x 503), "
        f"first success {recovered - started:.2f} s after the start, {len(after)} after it; "
        f"slowest answer {slowest:.2f} s; statuses seen {sorted(set(s for *_, s in outcomes))}"
    )
    errors = [(round(t - stopped, 3), e) for t, e in load.errors]
    assert errors == [], f"transport errors (s after the stop): {errors}"
    assert before and set(before) == {200}
    assert while_down and set(while_down) == {503}
    assert after and set(after) == {200}
    assert {s for *_, s in outcomes} <= {200, 503}  # never a 500, never a dropped connection
    assert slowest < 6  # no hang: connect_timeout is 5 s, a refused connection is at once
    assert recovered - started < 5
    assert down.status_code == 503 and down.headers["retry-after"]
    assert down.json()["detail"][0]["type"] == "database_unavailable"
    assert ready.status_code == 503 and "database unavailable" in ready.json()["reason"]


def heavy_forecast(history: list[float]) -> dict[str, object]:
    """300 inline series for the 8-member monthly ensemble: a few hundred ms of work."""
    series = [
        {"id": f"s{i}", "history": [v * (1 + i / 300) for v in history], "start": "1949-01-01"}
        for i in range(300)
    ]
    return {"series": series, "horizon": 12, "model": "m3_monthly", "level": [80]}


def test_sigterm_under_load_finishes_requests_in_flight_and_exits_within_the_grace(
    tmp_path, air_history
):
    grace_s = 10
    body = heavy_forecast(air_history)
    with fresh_database("postgresql", tmp_path) as url:
        env = api_env(url, FORECAST_GRACEFUL_SHUTDOWN_S=str(grace_s))
        api, base = start_migrated_api(env)
        try:
            with Load(lambda c: c.post("/forecast", json=body), base, READ, clients=6) as load:
                time.sleep(3)
                signalled = time.monotonic()
                api.send_signal(signal.SIGTERM)
                # uvicorn looks at its exit flag every 0.1 s, then closes its listening socket
                # while the requests in flight finish: a new connection is refused.
                time.sleep(0.3)
                try:
                    late: object = httpx.get(f"{base}/health/live", timeout=5).status_code
                except httpx.TransportError as exc:
                    late = type(exc).__name__
                code = api.wait(timeout=grace_s + 20)
                exited = time.monotonic() - signalled
        finally:
            if api.poll() is None:
                api.kill()
    outcomes = list(load.outcomes)
    # Sent at least 0.2 s before the signal (read by the server on loopback long before it
    # arrived) and not answered by then: in flight.
    in_flight = [(t0, t1, s) for t0, t1, s in outcomes if t0 < signalled - 0.2 and t1 > signalled]
    print(
        f"\nSIGTERM with {len(in_flight)} requests in flight (of {len(outcomes)}): statuses "
        f"{sorted(s for *_, s in in_flight)}, the last answered "
        f"{max(t1 for _, t1, _ in in_flight) - signalled:.2f} s after the signal; "
        f"exit {exited:.2f} s after it (grace {grace_s} s), code {code}; "
        f"a new request 0.3 s after the signal: {late}"
    )
    assert len(in_flight) >= 2
    assert all(s == 200 for *_, s in in_flight)
    assert exited < grace_s
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert late == "ConnectError"


def test_10000_random_forecasts_grow_resident_memory_less_than_5_percent(tmp_path, air_history):
    rng = random.Random(10_000)
    with fresh_database("postgresql", tmp_path) as url:
        # Monthly series go to the single AirPassengers model unless a request names the
        # 8-member m3_monthly ensemble (1 in 5): 10,000 requests in about a minute.
        models = '{"MS": "air_passengers"}'
        api, base = start_migrated_api(api_env(url, FORECAST_DEFAULT_MODELS=models))
        try:
            stored = [f"mem-{i}" for i in range(40)]
            frame = pd.read_csv(AIR_CSV)
            for i, sid in enumerate(stored):
                store_series(base, sid, frame.assign(y=frame["y"] * (1 + i / 40)))

            def body() -> dict[str, object]:
                series: list[dict[str, object]] = []
                for i in range(rng.choice([1, 1, 1, 2, 5, 20, 100])):
                    if rng.random() < 0.5:
                        series.append({"id": rng.choice(stored)})
                        continue
                    n = rng.randint(8, 144)
                    start = rng.randint(0, 144 - n)
                    series.append(
                        {
                            "id": f"in-{i}",
                            "history": [v * rng.uniform(0.5, 2) for v in air_history[start:][:n]],
                            "start": f"{1949 + start // 12}-{start % 12 + 1:02d}-01",
                            "freq": "MS",
                        }
                    )
                choice: dict[str, object] = {"series": series, "horizon": rng.randint(1, 12)}
                choice |= rng.choice(
                    [{}, {"level": [80]}, {"quantiles": [0.1, 0.9]}, {"model": "m3_monthly"}, {}]
                )
                return choice

            bodies = [body() for _ in range(10_000)]
            rss: list[float] = []
            with httpx.Client(base_url=base, headers=READ, timeout=60) as client:

                def ask(b: dict[str, object]) -> None:
                    response = client.post("/forecast", json=b)
                    assert response.status_code == 200, (b, response.text)

                # Four clients at once; resident memory after 1,000, 5,000 and 10,000.
                with ThreadPoolExecutor(4) as pool:
                    for start, end in ((0, 1_000), (1_000, 5_000), (5_000, 10_000)):
                        list(pool.map(ask, bodies[start:end]))
                        rss.append(rss_mb(api.pid))
        finally:
            api.terminate()
            api.wait(timeout=30)
    growth = (rss[2] - rss[1]) / rss[1]
    print(
        f"\n10,000 random forecasts: RSS {rss[0]:.0f} MB after 1,000, {rss[1]:.0f} MB after "
        f"5,000, {rss[2]:.0f} MB after 10,000: {growth:+.1%} over the second half"
    )
    assert growth < 0.05
