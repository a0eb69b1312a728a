"""Stored series over real HTTP, on SQLite and on PostgreSQL (each test runs on both)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from service.db import repository
from service.db.tables import ForecastLog
from tests.conftest import AIR_CSV


@pytest.fixture
def air_csv() -> str:
    df = pd.read_csv(AIR_CSV)
    return "ts,value\n" + "".join(f"{ds},{y}\n" for ds, y in zip(df["ds"], df["y"], strict=True))


def put(client, series_id: str = "air", frequency: str = "MS", description: str | None = None):
    return client.put(
        f"/series/{series_id}", json={"frequency": frequency, "description": description}
    )


def upload_csv(client, text_body: str, series_id: str = "air"):
    return client.post(
        f"/series/{series_id}/observations", content=text_body, headers={"content-type": "text/csv"}
    )


def count_rows(database_url: str, table: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        n = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(n)


def wait_for_rows(database_url: str, table: str, n: int, timeout_s: float = 10) -> int:
    """The forecast log is written in batches (FORECAST_FORECAST_LOG_FLUSH_S, 0.25 s by
    default): wait until ``table`` holds ``n`` rows, or return the count at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (count := count_rows(database_url, table)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def stored_forecast(client, horizon: int = 12, series_id: str = "air"):
    return client.post("/forecast", json={"series": [{"id": series_id}], "horizon": horizon})


def test_put_creates_then_updates(client):
    created = put(client, description="first")
    assert created.status_code == 201
    assert created.json()["frequency"] == "MS" and created.json()["description"] == "first"
    updated = put(client, description="second")
    assert updated.status_code == 200 and updated.json()["description"] == "second"
    assert updated.json()["created_at"] == created.json()["created_at"]
    detail = client.get("/series/air").json()
    assert detail["observation_count"] == 0 and detail["first_ts"] is None


def test_put_refuses_unknown_frequency_and_bad_ids(client):
    bad_freq = put(client, frequency="monthly")
    assert bad_freq.status_code == 422
    assert bad_freq.json()["detail"][0]["loc"] == ["body", "frequency"]
    assert client.put("/series/has space", json={"frequency": "MS"}).status_code == 422


def test_csv_upload_then_forecast_by_id_equals_the_inline_forecast(client, air_csv, air_history):
    put(client)
    uploaded = upload_csv(client, air_csv)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == {"series_id": "air", "received": 144, "inserted": 144, "updated": 0}
    by_id = stored_forecast(client).json()["forecasts"][0]
    inline = client.post(
        "/forecast",
        json={
            "series": [{"id": "air", "history": air_history, "start": "1949-01-01", "freq": "MS"}],
            "horizon": 12,
        },
    ).json()["forecasts"][0]
    assert by_id == inline  # exactly: same ids, model, timestamps and float values
    assert by_id["timestamps"][0] == "1961-01-01"
    assert (
        client.get("/series/air/forecast", params={"horizon": 12}).json()["forecasts"][0] == inline
    )


def test_same_batch_twice_leaves_the_same_rows(client, air_csv, database_url):
    put(client)
    upload_csv(client, air_csv)
    before = client.get("/series/air/observations").json()
    again = upload_csv(client, air_csv)
    assert again.json() == {"series_id": "air", "received": 144, "inserted": 0, "updated": 144}
    assert client.get("/series/air/observations").json() == before
    assert count_rows(database_url, "observations") == 144


def test_upsert_replaces_values_by_timestamp(client):
    put(client)
    client.post("/series/air/observations", json=[{"ts": "2000-01-01", "value": 1.0}])
    result = client.post(
        "/series/air/observations",
        json=[{"ts": "2000-01-01", "value": 5.0}, {"ts": "2000-02-01", "value": 6.0}],
    )
    assert result.json() == {"series_id": "air", "received": 2, "inserted": 1, "updated": 1}
    observations = client.get("/series/air/observations").json()["observations"]
    assert observations == [
        {"ts": "2000-01-01T00:00:00Z", "value": 5.0},
        {"ts": "2000-02-01T00:00:00Z", "value": 6.0},
    ]


@pytest.mark.parametrize(
    ("rows", "bad_row", "words"),
    [
        ('{"ts": "2000-04-01", "value": NaN}', 3, "finite"),
        ('{"ts": "2000-04-15", "value": 4}', 3, "does not fall on frequency 'MS'"),
        ('{"ts": "2000-02-01", "value": 4}', 3, "repeats row 1"),
        ('{"ts": "not a date", "value": 4}', 3, "datetime"),
    ],
)
def test_one_invalid_json_row_stores_nothing_and_is_named(
    client, database_url, rows, bad_row, words
):
    put(client)
    body = (
        '[{"ts": "2000-01-01", "value": 1}, {"ts": "2000-02-01", "value": 2}, '
        f'{{"ts": "2000-03-01", "value": 3}}, {rows}]'
    )
    response = client.post(
        "/series/air/observations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"][:2] == ["body", bad_row]
    assert words in detail["msg"]
    assert count_rows(database_url, "observations") == 0


def test_one_invalid_csv_row_stores_nothing_and_is_named(client, air_csv, database_url):
    put(client)
    lines = air_csv.splitlines()
    lines[50] = "1953-02-01,lots"  # data row 49
    response = upload_csv(client, "\n".join(lines))
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", 49]
    assert "row 49 (line 51)" in detail["msg"] and "lots" in detail["msg"]
    assert count_rows(database_url, "observations") == 0


def test_every_bad_row_is_reported(client):
    put(client)
    body = "ts,value\n2000-01-01,1\n2000-01-02,2\n2000-02-01,inf\n2000-03-01,3\n2000-03-09,4\n"
    detail = upload_csv(client, body).json()["detail"]
    assert [d["loc"] for d in detail] == [["body", 2]]  # parse errors are reported first
    body = "ts,value\n2000-01-01,1\n2000-01-02,2\n2000-03-01,3\n2000-03-09,4\n"
    detail = upload_csv(client, body).json()["detail"]
    assert [d["loc"] for d in detail] == [["body", 1, "ts"], ["body", 3, "ts"]]


def test_unknown_series_is_404_and_wrong_content_type_is_415(client):
    missing = client.post("/series/nope/observations", json=[{"ts": "2000-01-01", "value": 1}])
    assert missing.status_code == 404
    assert "'nope' does not exist" in missing.json()["detail"][0]["msg"]
    put(client)
    wrong = client.post(
        "/series/air/observations", content=b"x", headers={"content-type": "text/plain"}
    )
    assert wrong.status_code == 415
    assert "text/csv" in wrong.json()["detail"][0]["msg"]
    assert client.get("/series/nope").status_code == 404
    assert client.get("/series/nope/observations").status_code == 404
    assert client.get("/series/nope/forecast", params={"horizon": 3}).status_code == 404


def test_frequency_change_with_data_is_409(client):
    put(client)
    client.post("/series/air/observations", json=[{"ts": "2000-01-01", "value": 1}])
    conflict = put(client, frequency="D")
    assert conflict.status_code == 409
    assert "delete it first" in conflict.json()["detail"][0]["msg"]
    put(client, "empty")
    assert put(client, "empty", frequency="D").status_code == 200  # no data yet: allowed


def test_series_pages_cover_every_series_once(client):
    ids = [f"s{i:02d}" for i in range(7)]
    for series_id in ids:
        put(client, series_id)
    seen, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        page = client.get("/series", params=params).json()
        seen += [item["id"] for item in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == ids


def test_observation_range_and_limit(client, air_csv):
    put(client)
    upload_csv(client, air_csv)
    page = client.get(
        "/series/air/observations", params={"start": "1960-01-01", "end": "1960-06-01"}
    ).json()["observations"]
    assert [o["ts"][:7] for o in page] == [f"1960-{m:02d}" for m in range(1, 7)]
    assert page[0]["value"] == 417.0
    assert (
        len(client.get("/series/air/observations", params={"limit": 5}).json()["observations"]) == 5
    )


def test_delete_removes_series_observations_and_forecast_log(client, air_csv, database_url):
    put(client)
    upload_csv(client, air_csv)
    stored_forecast(client)
    assert wait_for_rows(database_url, "forecasts", 1) == 1
    assert client.delete("/series/air").status_code == 204
    assert client.get("/series/air").status_code == 404
    assert client.delete("/series/air").status_code == 404
    for table in ("series", "observations", "forecasts"):
        assert count_rows(database_url, table) == 0


def test_mixed_stored_and_inline_in_one_request(client, air_csv, air_history):
    put(client)
    upload_csv(client, air_csv)
    inline = {"id": "inline", "history": air_history[:-12], "start": "1949-01-01", "freq": "MS"}
    mixed = client.post(
        "/forecast",
        json={"series": [inline, {"id": "air"}, inline | {"id": "again"}], "horizon": 4},
    ).json()["forecasts"]
    assert [f["id"] for f in mixed] == ["inline", "air", "again"]
    assert mixed[1] == stored_forecast(client, 4).json()["forecasts"][0]
    assert mixed[0]["timestamps"][0] == "1960-01-01" and mixed[0]["values"] == mixed[2]["values"]


def test_every_stored_forecast_is_logged_with_its_model_version(client, air_csv, database_url):
    put(client)
    upload_csv(client, air_csv)
    served = stored_forecast(client, 6).json()["forecasts"][0]
    assert wait_for_rows(database_url, "forecasts", 1) == 1
    engine = create_engine(database_url)
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT series_id, model_name, model_version, horizon, target_ts, "
                '"values" FROM forecasts'
            )
        ).one()
    engine.dispose()
    target_ts, values = row[4], row[5]
    if isinstance(target_ts, str):  # SQLite hands JSON back as text
        target_ts, values = json.loads(target_ts), json.loads(values)
    assert row[:4] == ("air", served["model"]["name"], served["model"]["version"], 6)
    assert target_ts == served["timestamps"] and values == served["values"]


def test_the_log_skips_forecasts_of_series_deleted_or_created_again_since(client, database_url):
    """The log is written after the fact: a row whose series is gone, or was created again
    after the forecast was issued, is not that series' and is skipped; the rest are written
    as given (the COPY text shares fields between rows and escapes tabs and backslashes)."""
    for sid in ("kept", "gone", "again", "other"):
        assert put(client, sid).status_code == 201
    issued = datetime.now(UTC)
    time.sleep(0.01)
    assert client.delete("/series/gone").status_code == 204
    assert client.delete("/series/again").status_code == 204
    assert put(client, "again").status_code == 201  # created after the forecast was issued
    first = {"model_name": "m\tx\\y", "model_version": "1", "issued_at": issued, "horizon": 2}
    second = first | {"model_version": "2", "horizon": 1}
    steps = {"target_ts": ["2000-01-01", "2000-02-01"], "values": [1.5, -2.0]}
    rows = [first | steps | {"series_id": sid} for sid in ("kept", "gone", "again", "other")]
    rows.append(second | {"series_id": "kept", "target_ts": ["2001-01-01"], "values": [3.25]})
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            assert repository.record_forecasts(session, rows=rows) == 3
        with engine.connect() as connection:
            logged = connection.execute(
                select(
                    ForecastLog.series_id,
                    ForecastLog.model_name,
                    ForecastLog.model_version,
                    ForecastLog.issued_at,
                    ForecastLog.horizon,
                    ForecastLog.target_ts,
                    ForecastLog.values,
                ).order_by(ForecastLog.id)
            ).all()
    finally:
        engine.dispose()
    decoded = [
        (*row[:3], row[3].replace(tzinfo=UTC) if row[3].tzinfo is None else row[3], *row[4:])
        for row in logged  # SQLite hands the time back naive (stored in UTC)
    ]
    assert decoded == [
        ("kept", "m\tx\\y", "1", issued, 2, steps["target_ts"], steps["values"]),
        ("other", "m\tx\\y", "1", issued, 2, steps["target_ts"], steps["values"]),
        ("kept", "m\tx\\y", "2", issued, 1, ["2001-01-01"], [3.25]),
    ]


def test_a_forecast_the_same_as_the_last_logged_for_its_series_is_not_logged_again(
    client, database_url
):
    """With ``logged`` kept between calls, the log is a record of changes: a row is written
    when its series' forecast differs from the last one written for it (values, target steps,
    horizon, model, version), or when the series was created again since, and not otherwise."""
    for sid in ("a", "b"):
        assert put(client, sid).status_code == 201
    row = {
        "model_name": "m",
        "model_version": "1",
        "horizon": 2,
        "target_ts": ["2000-01-01", "2000-02-01"],
        "values": [1.5, 2.5],
    }
    logged: dict[str, int] = {}
    engine = create_engine(database_url)

    def record(*rows: dict[str, object], bind: Engine = engine) -> int:
        issued = datetime.now(UTC)
        with Session(bind) as session:
            return repository.record_forecasts(
                session, rows=[r | {"issued_at": issued} for r in rows], logged=logged
            )

    def created_at(sid: str) -> datetime:  # the rows carry it, read with the series' window
        with Session(engine) as session:
            return repository.get_series(session, series_id=sid).created_at

    a, b = (row | {"series_id": sid, "series_created_at": created_at(sid)} for sid in "ab")
    changed = a | {"values": [1.5, 2.75]}
    unreachable = create_engine("sqlite:////no-such-folder/forecasts.db")
    try:
        assert record(a, b, a) == 2  # a twice in one call: once
        assert record(a, b) == 0
        assert record(a, b, bind=unreachable) == 0  # repeats need no database at all
        assert record(changed, b) == 1
        assert record(a) == 1  # back to the first forecast: a change again
        for other in ({"horizon": 1}, {"model_version": "2"}, {"target_ts": ["2000-02-01"] * 2}):
            assert record(a | other) == 1
            assert record(a | other) == 0
        assert client.delete("/series/b").status_code == 204
        assert put(client, "b").status_code == 201
        assert record(b | {"series_created_at": created_at("b")}) == 1  # created again
        # a's six rows and b's one since it was created again (its first went with it)
        assert count_rows(database_url, "forecasts") == 6 + 1
    finally:
        engine.dispose()


def test_a_stored_series_served_again_unchanged_is_logged_once(client, air_csv, database_url):
    put(client)
    upload_csv(client, air_csv)
    first = stored_forecast(client, 6).json()
    assert wait_for_rows(database_url, "forecasts", 1) == 1
    assert stored_forecast(client, 6).json() == first
    stored_forecast(client, 5)  # logged after the repeat, which is therefore written or not
    assert wait_for_rows(database_url, "forecasts", 2) == 2
    client.post("/series/air/observations", json=[{"ts": "1961-01-01", "value": 450.0}])
    assert stored_forecast(client, 6).json() != first
    assert wait_for_rows(database_url, "forecasts", 3) == 3
    time.sleep(0.5)  # two flushes (0.25 s apart by default): nothing more arrives
    assert count_rows(database_url, "forecasts") == 3


def test_stored_series_ending_on_other_dates_in_one_request_each_get_their_own_labels(
    client, air_csv
):
    """Planning works out a forecast's labels once per end date: series of one request that
    end on another date, or are too short for the model, still get their own."""
    put(client)
    upload_csv(client, air_csv)  # ends 1960-12
    put(client, "early")
    upload_csv(client, "\n".join(air_csv.splitlines()[:-12]), "early")  # ends 1959-12
    put(client, "short")
    client.post(
        "/series/short/observations",
        json=[{"ts": f"1960-{m:02d}-01", "value": float(m)} for m in range(1, 13)],
    ).raise_for_status()
    ids = ["air", "early", "short", "air"]
    response = client.post("/forecast", json={"series": [{"id": i} for i in ids], "horizon": 2})
    forecasts = response.json()["forecasts"]
    assert [f["timestamps"] for f in forecasts] == [
        ["1961-01-01", "1961-02-01"],
        ["1960-01-01", "1960-02-01"],
        ["1961-01-01", "1961-02-01"],
        ["1961-01-01", "1961-02-01"],
    ]
    assert [f["method"] for f in forecasts] == ["model", "model", "seasonal_naive", "model"]
    assert forecasts[0] == forecasts[3] and forecasts[0]["values"] != forecasts[1]["values"]


def test_stored_series_shorter_than_the_window_gets_seasonal_naive_or_422_when_strict(client):
    put(client)
    client.post(
        "/series/air/observations",
        json=[{"ts": f"2000-{m:02d}-01", "value": float(m)} for m in range(1, 13)],
    )
    forecast = stored_forecast(client, 3).json()["forecasts"][0]
    assert forecast["method"] == "seasonal_naive"
    assert forecast["values"] == [1.0, 2.0, 3.0] and forecast["timestamps"][0] == "2001-01-01"
    response = client.post(
        "/forecast", json={"series": [{"id": "air"}], "horizon": 3, "strict": True}
    )
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "series", 0, "id"]
    assert "has 12 values" in detail["msg"] and "needs at least 24" in detail["msg"]


def test_gap_inside_the_input_window_is_422_naming_it(client, air_csv):
    put(client)
    lines = air_csv.splitlines()
    del lines[1 + 140]  # 1960-09 is missing: 4 months before the end, inside the window
    upload_csv(client, "\n".join(lines))
    response = stored_forecast(client)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["type"] == "history_gap"
    assert "no observation at 1960-09-01" in detail["msg"]
    path_form = client.get("/series/air/forecast", params={"horizon": 3}).json()["detail"][0]
    assert path_form["loc"] == ["path", "series_id"]
    # The missing month uploaded: the series' window is read again, and checked again.
    client.post("/series/air/observations", json=[{"ts": "1960-09-01", "value": 508.0}])
    assert stored_forecast(client).status_code == 200


def test_unknown_stored_series_in_forecast_is_404_naming_it(client):
    response = client.post("/forecast", json={"series": [{"id": "ghost"}], "horizon": 3})
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["body", "series", 0, "id"]


def test_limits_state_the_setting(make_client, settings):
    small = make_client(
        settings.model_copy(
            update={"max_observations_per_request": 3, "max_page_size": 2, "max_body_bytes": 2048}
        )
    )
    put(small)
    too_many = small.post(
        "/series/air/observations",
        json=[{"ts": f"2000-{m:02d}-01", "value": 1.0} for m in range(1, 5)],
    )
    assert too_many.status_code == 422
    assert (
        "limit is 3 (FORECAST_MAX_OBSERVATIONS_PER_REQUEST)" in too_many.json()["detail"][0]["msg"]
    )
    page = small.get("/series", params={"limit": 3})
    assert page.status_code == 422 and "FORECAST_MAX_PAGE_SIZE" in page.json()["detail"][0]["msg"]
    big = "ts,value\n" + "2000-01-01,1\n" * 400
    declared = upload_csv(small, big)
    assert declared.status_code == 413
    assert "2048 bytes (FORECAST_MAX_BODY_BYTES)" in declared.json()["detail"][0]["msg"]
    chunked = small.post(
        "/series/air/observations",
        content=(chunk.encode() for chunk in [big[:1000], big[1000:2000], big[2000:]]),
        headers={"content-type": "text/csv"},
    )
    assert chunked.status_code == 413
    assert small.get("/health/live").status_code == 200  # and it keeps serving


def test_stored_forecast_by_path_names_the_query_parameter_that_breaks_a_limit(client, air_csv):
    put(client)
    upload_csv(client, air_csv)
    response = client.get("/series/air/forecast", params={"horizon": 10**9})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["query", "horizon"] and "horizon of 12" in detail["msg"]
    unknown = client.get("/series/air/forecast", params={"horizon": 3, "model": "nope"})
    assert unknown.json()["detail"][0]["loc"] == ["query", "model"]
