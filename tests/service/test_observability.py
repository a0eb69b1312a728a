"""/metrics scraped over HTTP, and the request id on every answer."""

from __future__ import annotations

import asyncio
import logging
import re
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.errors import SeriesNotFound, ServiceError
from service.observability import Metrics, RequestContext
from service.plain_routes import PlainRoute, PlainRoutes
from tests.conftest import ADMIN


def scrape(client: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name: [(labels, value)]."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that carry ``labels``; 0 when there are none."""
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


def test_metrics_show_requests_inference_models_and_jobs(client, air_history):
    inline = {"id": "air", "history": air_history, "start": "1949-01-01", "freq": "MS"}
    before = scrape(client)
    for _ in range(3):
        assert client.post("/forecast", json={"series": [inline], "horizon": 12}).status_code == 200
    assert client.post("/forecast", json={"series": [inline], "horizon": 0}).status_code == 422
    assert client.post("/retrain", json={"model": "air_passengers"}, headers=ADMIN).status_code in (
        200,
        202,
    )
    after = scrape(client)

    ok = {"method": "POST", "route": "/forecast", "status": "200"}
    bad = {"method": "POST", "route": "/forecast", "status": "422"}
    counted = value(after, "forecast_http_requests_total", **ok)
    assert counted - value(before, "forecast_http_requests_total", **ok) == 3
    assert value(after, "forecast_http_requests_total", **bad) >= 1
    # The latency histogram, per route and status, counts the same requests.
    assert value(after, "forecast_http_request_duration_seconds_count", **ok) >= 3
    assert value(after, "forecast_http_request_duration_seconds_bucket", le="+Inf", **ok) >= 3
    # Unknown paths are one label value, not one per path.
    client.get("/no/such/path/12345")
    labels = [have["route"] for have, _ in scrape(client)["forecast_http_requests_total"]]
    assert "unmatched" in labels and not any("12345" in route for route in labels)

    assert value(after, "forecast_inference_duration_seconds_count", model="air_passengers") >= 3
    assert value(after, "forecast_inference_batch_size_sum", model="air_passengers") >= 3
    loaded = {have["model"]: have for have, v in after["forecast_model_loaded"] if v == 1}
    ready = client.get("/health/ready").json()["models"]
    assert {m["name"]: m["version"] for m in ready} == {
        name: have["version"] for name, have in loaded.items()
    }
    assert value(after, "forecast_retrain_jobs", status="queued") == 1
    assert value(after, "forecast_retrain_jobs", status="failed") == 0
    assert value(after, "forecast_database_up") == 1
    assert value(after, "process_resident_memory_bytes") > 50e6


def test_every_answer_carries_a_request_id(client):
    given = client.get("/health/live", headers={"X-Request-ID": "trace-4711.a"})
    assert given.headers["x-request-id"] == "trace-4711.a"  # a caller's id is kept
    first, second = client.get("/health/live"), client.post("/forecast", content=b"{")
    ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", i) for i in ids)
    # Anything that does not look like an id is replaced, not echoed into logs and headers.
    odd = client.get("/health/live", headers={"X-Request-ID": "x" * 500})
    assert odd.headers["x-request-id"] != "x" * 500


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"]
)
def test_forecast_body_must_be_json(client, content_type):
    response = client.post(
        "/forecast",
        content=b'{"series": [{"id": "a"}], "horizon": 1}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 415
    assert response.json()["detail"][0]["loc"] == ["header", "content-type"]


def test_openapi_documents_the_forecast_body(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/forecast"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ForecastRequest"}
    components = schema["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', client.get("/openapi.json").text))
    assert refs <= set(components), f"dangling references: {refs - set(components)}"
    assert "series" in components["ForecastRequest"]["properties"]


def test_an_unhandled_error_is_a_500_that_carries_the_request_id(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    app = RequestContext(broken, Metrics(), access_log="errors", plain_routes=[])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/anything", headers={"X-Request-ID": "req-500"})

    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert response.json()["detail"][0]["type"] == "internal_error"
    logged = [r for r in caplog.records if r.name == "service.errors"]
    assert logged and "a bug" in (logged[0].exc_text or "")


def test_a_plain_route_is_answered_before_the_router_with_the_apps_error_handlers():
    """PlainRoutes calls its endpoints directly: the router is never reached for them, errors
    are answered by the app's registered handlers, and unhandled ones reach RequestContext."""
    reached_router: list[str] = []

    async def forecast(scope, receive) -> bytes:
        kind = scope["query_string"]
        if kind == b"fail=service":
            raise SeriesNotFound("gone", ("body", "series", 0, "id"))
        if kind == b"fail=bug":
            raise RuntimeError("a bug")
        return b'{"answered": true}'

    async def router(scope, receive, send):
        reached_router.append(scope["path"])
        await Response(b"routed")(scope, receive, send)

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"detail": exc.details()}, status_code=exc.status_code)

    # What PlainRoutes reads from scope["app"]: the registered handlers.
    registered = SimpleNamespace(exception_handlers={ServiceError: handle})

    async def with_app(scope, receive, send):
        scope["app"] = registered
        await plain(scope, receive, send)

    plain = PlainRoutes(router, [PlainRoute("/forecast", "POST", forecast)])
    app = RequestContext(with_app, Metrics(), access_log="off", plain_routes=[])

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return [
                await client.post("/forecast"),
                await client.post("/forecast?fail=service"),
                await client.post("/forecast?fail=bug"),
                await client.get("/forecast"),  # not a plain route's method: routed
            ]

    ok, handled, bug, routed = asyncio.run(call())
    assert ok.status_code == 200 and ok.json() == {"answered": True}
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["content-length"] == str(len(ok.content))
    assert handled.status_code == 404
    assert handled.json()["detail"][0]["loc"] == ["body", "series", 0, "id"]
    assert bug.status_code == 500 and bug.json()["detail"][0]["type"] == "internal_error"
    assert routed.content == b"routed"
    assert reached_router == ["/forecast"]  # only the GET
