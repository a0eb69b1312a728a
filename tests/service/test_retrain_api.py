"""POST /retrain, GET /retrain[/{id}] and GET /models over HTTP, on SQLite and PostgreSQL.
(Workers, promotion and hot swap: tests/e2e/test_retrain.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ADMIN


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdDp0ZXN0"}],
    ids=["none", "wrong", "basic"],
)
def test_retrain_without_the_admin_token_is_401_and_queues_nothing(client, headers):
    # Not the fixture's client: that one sends the admin token with every request.
    url = f"{client.base_url}/retrain"
    response = httpx.post(url, json={"model": "air_passengers"}, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "FORECAST_ADMIN_TOKEN" in response.json()["detail"][0]["msg"]
    assert client.get("/retrain").json()["items"] == []


def test_retrain_is_queued_with_a_status_url(client):
    response = client.post(
        "/retrain",
        json={"model": "air_passengers", "mode": "scratch", "overrides": {"max_epochs": 3}},
        headers=ADMIN,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["model"], job["status"], job["attempts"]) == ("air_passengers", "queued", 0)
    assert job["params"] == {
        "mode": "scratch",
        "promote": "if_better",
        "overrides": {"max_epochs": 3},
    }
    assert job["status_url"].endswith(f"/retrain/{job['id']}")
    assert client.get(job["status_url"]).json()["id"] == job["id"]
    assert [j["id"] for j in client.get("/retrain").json()["items"]] == [job["id"]]


def test_concurrent_retrains_of_one_model_create_one_job(client):
    def post(_: int):
        return client.post("/retrain", json={"frequency": "QS"}, headers=ADMIN)

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(post, range(2)))
    assert sorted(r.status_code for r in responses) == [200, 202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert responses[0].json()["model"] == "m3_quarterly"  # routed by frequency
    assert len(client.get("/retrain").json()["items"]) == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"model": "nope"}, ["body", "model"]),
        ({"frequency": "D"}, ["body", "frequency"]),
        ({"frequency": "fortnightly"}, ["body", "frequency"]),
        ({}, ["body", "model"]),  # several models are loaded: say which
        ({"model": "air_passengers", "mode": "warm"}, ["body", "mode"]),
        ({"model": "air_passengers", "overrides": {"max_epochs": 0}}, None),
    ],
)
def test_bad_retrain_requests_are_422_naming_the_field(client, body, loc):
    response = client.post("/retrain", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    if loc is not None:
        assert response.json()["detail"][0]["loc"] == loc
    assert client.get("/retrain").json()["items"] == []


def test_unknown_job_is_404(client):
    response = client.get("/retrain/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_models_lists_versions_sources_and_backtest_metrics(client):
    listing = client.get("/models").json()
    names = [m["name"] for m in listing["models"]]
    assert names == ["air_passengers", "m3_monthly", "m3_quarterly"]
    air = client.get("/models/air_passengers").json()
    assert air["source"].startswith("folder:") and air["source"].endswith("air_passengers")
    assert air["metrics"]["lstm"]["mae"] > 0 and air["version"]
    assert client.get("/models/nope").status_code == 404
