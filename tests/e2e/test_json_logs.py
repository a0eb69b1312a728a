"""``python -m service serve`` writes JSON lines, and each request's records carry the id that
its response header returns."""

from __future__ import annotations

import json

import httpx

from service.db import migrate
from tests.conftest import MODELS, READ, REPO, start_api_process


def test_logs_are_json_lines_with_the_request_id_of_the_response(tmp_path, air_history):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    migrate.upgrade(url)
    env = {
        "DATABASE_URL": url,
        "FORECAST_MODELS_DIR": str(MODELS),
        "FORECAST_ADMIN_TOKEN": "json-log-test-token",
        "FORECAST_ACCESS_LOG": "all",
    }
    proc, base = start_api_process(env, REPO, capture=True)
    try:
        inline = {"id": "air", "history": air_history, "start": "1949-01-01", "freq": "MS"}
        ok = httpx.post(
            f"{base}/forecast",
            json={"series": [inline], "horizon": 3},
            headers={**READ, "X-Request-ID": "client-chosen-17"},
        )
        bad = httpx.post(f"{base}/forecast", json={"series": [inline], "horizon": -1}, headers=READ)
        missing = httpx.get(f"{base}/series/nowhere", headers=READ)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert ok.status_code == 200 and bad.status_code == 422 and missing.status_code == 404
    assert ok.headers["x-request-id"] == "client-chosen-17"

    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records, output  # every line parsed as JSON (json.loads raises otherwise)
    assert all({"time", "level", "logger", "message", "request_id"} <= r.keys() for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "service.access"}
    for response in (ok, bad, missing):
        record = access[response.headers["x-request-id"]]
        assert record["status"] == response.status_code
        assert record["method"] == response.request.method
        assert record["path"] == response.request.url.path
        assert record["duration_ms"] > 0
    assert access["client-chosen-17"]["route"] == "/forecast"
    assert access[missing.headers["x-request-id"]]["route"] == "/series/{series_id}"
    # uvicorn's own records come through the same JSON handler.
    assert any(r["logger"].startswith("uvicorn") for r in records)
