"""Every route x {no token, wrong token, read token, admin token}, over HTTP on PostgreSQL; the
/metrics and CORS settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pandas as pd
import pytest

from service.app import create_app
from service.config import Settings
from service.db import migrate
from service.errors import every_route
from tests.conftest import (
    ADMIN,
    ADMIN_TOKEN,
    AIR_CSV,
    MODELS,
    READ,
    READ_TOKEN,
    fresh_database,
    serve,
)

Call = Callable[[httpx.Client], httpx.Response]
AIR = pd.read_csv(AIR_CSV)
ROWS = [
    {"ts": f"{d}T00:00:00Z", "value": float(v)} for d, v in zip(AIR["ds"], AIR["y"], strict=True)
]
INLINE = {"id": "x", "history": AIR["y"].tolist(), "start": "1949-01-01", "freq": "MS"}

# One request per route that succeeds with the admin token, and the scope it needs.
ROUTES: dict[tuple[str, str], tuple[str, Call]] = {
    ("GET", "/health/live"): ("open", lambda c: c.get("/health/live")),
    ("GET", "/health/ready"): ("open", lambda c: c.get("/health/ready")),
    ("GET", "/metrics"): ("open", lambda c: c.get("/metrics")),
    ("GET", "/openapi.json"): ("open", lambda c: c.get("/openapi.json")),
    ("GET", "/docs"): ("open", lambda c: c.get("/docs")),
    ("GET", "/docs/oauth2-redirect"): ("open", lambda c: c.get("/docs/oauth2-redirect")),
    ("GET", "/redoc"): ("open", lambda c: c.get("/redoc")),
    ("POST", "/forecast"): (
        "read",
        lambda c: c.post("/forecast", json={"series": [{"id": "air"}, INLINE], "horizon": 3}),
    ),
    ("GET", "/series/{series_id}/forecast"): (
        "read",
        lambda c: c.get("/series/air/forecast", params={"horizon": 3}),
    ),
    ("GET", "/series"): ("read", lambda c: c.get("/series")),
    ("GET", "/series/{series_id}"): ("read", lambda c: c.get("/series/air")),
    ("GET", "/series/{series_id}/observations"): (
        "read",
        lambda c: c.get("/series/air/observations"),
    ),
    ("GET", "/models"): ("read", lambda c: c.get("/models")),
    ("GET", "/models/{name}"): ("read", lambda c: c.get("/models/air_passengers")),
    ("GET", "/retrain"): ("read", lambda c: c.get("/retrain")),
    ("GET", "/retrain/{job_id}"): ("read", lambda c: c.get(f"/retrain/{job_id(c)}")),
    ("PUT", "/series/{series_id}"): (
        "admin",
        lambda c: c.put("/series/air", json={"frequency": "MS", "description": "passengers"}),
    ),
    ("POST", "/series/{series_id}/observations"): (
        "admin",
        lambda c: c.post("/series/air/observations", json=ROWS[-12:]),
    ),
    ("DELETE", "/series/{series_id}"): ("admin", lambda c: c.delete("/series/air")),
    ("POST", "/retrain"): ("admin", lambda c: c.post("/retrain", json={"model": "air_passengers"})),
}
TOKENS = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-the-token"},
    "read": READ,
    "admin": ADMIN,
}


def job_id(client: httpx.Client) -> str:
    jobs = httpx.get(f"{client.base_url}/retrain", headers=ADMIN).json()["items"]
    return str(jobs[0]["id"])


def expected(scope: str, token: str) -> str:
    if scope == "open" or token == "admin" or (scope == "read" and token == "read"):
        return "ok"
    return "403" if token == "read" else "401"


def app_routes(settings: Settings) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, HEAD aside."""
    routes = every_route(create_app(settings))
    return {(m, route.path) for route in routes for m in route.methods if m != "HEAD"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with fresh_database("postgresql", tmp_path_factory.mktemp("auth")) as url:
        migrate.upgrade(url)
        yield Settings(
            models_dir=MODELS,
            default_models={"MS": "air_passengers"},
            database_url=url,
            admin_token=ADMIN_TOKEN,
            read_token=READ_TOKEN,
            registry_poll_s=0,
        )


def test_every_route_is_in_the_matrix(settings):
    assert app_routes(settings) == set(ROUTES)


def test_every_route_with_each_token_gets_the_expected_status(settings):
    outcomes = []
    with serve(settings, headers={}) as client:
        admin = httpx.Client(base_url=client.base_url, headers=ADMIN)
        for (method, path), (scope, call) in ROUTES.items():
            for token, headers in TOKENS.items():
                # The series and a job exist before every call (DELETE removes the series).
                admin.put("/series/air", json={"frequency": "MS"}).raise_for_status()
                admin.post("/series/air/observations", json=ROWS).raise_for_status()
                admin.post("/retrain", json={"model": "air_passengers"}).raise_for_status()
                client.headers.clear()
                client.headers.update(headers)
                response = call(client)
                want = expected(scope, token)
                got = "ok" if response.is_success else str(response.status_code)
                outcomes.append((method, path, token, want, got, response.text[:200]))
        admin.close()
    wrong = [o for o in outcomes if o[3] != o[4]]
    print(f"\n{len(outcomes)} calls ({len(ROUTES)} routes x {len(TOKENS)}): {len(wrong)} wrong")
    assert wrong == []
    refused = [o for o in outcomes if o[4] in ("401", "403")]
    assert all("authorization" in o[5] for o in refused)  # detail.loc names the header


@pytest.mark.parametrize(
    ("setting", "none", "read", "admin"),
    [
        ("open", 200, 200, 200),
        ("read", 401, 200, 200),
        ("admin", 401, 403, 200),
        ("off", 404, 404, 404),
    ],
)
def test_metrics_follow_their_setting(settings, setting, none, read, admin):
    with serve(settings.model_copy(update={"metrics": setting}), headers={}) as client:
        got = [client.get("/metrics", headers=h).status_code for h in ({}, READ, ADMIN)]
    assert got == [none, read, admin]


def test_cors_is_off_by_default_and_answers_only_the_configured_origins(settings):
    preflight = {
        "Origin": "https://dash.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with serve(settings, headers={}) as client:
        off = client.options("/forecast", headers=preflight)
        simple = client.get("/series", headers={**READ, "Origin": "https://dash.example.com"})
    assert "access-control-allow-origin" not in off.headers
    assert "access-control-allow-origin" not in simple.headers
    configured = settings.model_copy(update={"cors_origins": ["https://dash.example.com"]})
    with serve(configured, headers={}) as client:
        allowed = client.options("/forecast", headers=preflight)
        other = client.options("/forecast", headers={**preflight, "Origin": "https://evil.test"})
        simple = client.get("/series", headers={**READ, "Origin": "https://dash.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == "https://dash.example.com"
