"""Malformed and oversized input, over HTTP on PostgreSQL: each gets a 4xx naming the field or
the limit within 1 s, and the api answers normally afterwards. The JSON depth counter."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from service.config import Settings
from service.db import migrate
from service.limits import DepthGuard, JsonDepth
from tests.conftest import ADMIN, ADMIN_TOKEN, MODELS, fresh_database, serve

LIMITS = {
    "max_body_bytes": 1024 * 1024,
    "max_series_per_request": 50,
    "max_history_length": 5000,
    "max_observations_per_request": 1000,
    "max_page_size": 100,
    "max_json_depth": 32,
}
HISTORY = ", ".join(str(100 + i % 12) for i in range(48))


def inline(history: str = HISTORY, horizon: str = "12") -> bytes:
    return (
        f'{{"series": [{{"id": "a", "history": [{history}], "start": "2000-01-01", '
        f'"freq": "MS"}}], "horizon": {horizon}}}'
    ).encode()


def rows(stamps: list[str]) -> bytes:
    return json.dumps([{"ts": ts, "value": 1.0} for ts in stamps]).encode()


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length (httpx sends a generator chunked)."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@dataclass
class Case:
    method: str
    path: str
    body: bytes | Iterator[bytes] | None
    status: int
    says: str  # in the first detail's msg
    content_type: str = "application/json"
    more_headers: tuple[tuple[str, str], ...] = ()


DEEP = b"[" * 100_000 + b"]" * 100_000
CASES = {
    "NaN in a history": Case("POST", "/forecast", inline("1, NaN, 3"), 422, "finite"),
    "Infinity in a history": Case("POST", "/forecast", inline("1, Infinity"), 422, "finite"),
    "a number that overflows": Case("POST", "/forecast", inline("1, 1e999"), 422, "finite"),
    "NaN in an upload": Case(
        "POST", "/series/m/observations", b'[{"ts": "2000-01-01", "value": NaN}]', 422, "finite"
    ),
    "nan in a CSV upload": Case(
        "POST", "/series/m/observations", b"ts,value\n2000-01-01,nan\n", 422, "finite", "text/csv"
    ),
    "JSON nested 100,000 deep (forecast)": Case("POST", "/forecast", DEEP, 422, "deeper than 32"),
    "JSON nested 100,000 deep (series)": Case("PUT", "/series/m", DEEP, 422, "deeper than 32"),
    "JSON nested 100,000 deep (retrain)": Case("POST", "/retrain", DEEP, 422, "deeper than 32"),
    "JSON nested 100,000 deep, chunked": Case(
        "POST", "/forecast", chunked(DEEP, 4096), 422, "deeper than 32"
    ),
    "a body over the limit": Case(
        "POST", "/forecast", b" " * (2 * 1024 * 1024), 413, "FORECAST_MAX_BODY_BYTES"
    ),
    "a chunked body over the limit": Case(
        "POST", "/forecast", chunked(b" " * (2 * 1024 * 1024)), 413, "FORECAST_MAX_BODY_BYTES"
    ),
    "unsorted timestamps": Case(
        "POST", "/series/m/observations", rows(["2000-02-01", "2000-01-01"]), 422, "oldest first"
    ),
    "a duplicate timestamp": Case(
        "POST", "/series/m/observations", rows(["2000-01-01", "2000-01-01"]), 422, "repeats row 0"
    ),
    "wrong content type (forecast)": Case(
        "POST", "/forecast", inline(), 415, "application/json", "text/plain"
    ),
    "wrong content type (upload)": Case(
        "POST", "/series/m/observations", rows(["2000-01-01"]), 415, "text/csv", "application/xml"
    ),
    "a horizon of 10^9": Case("POST", "/forecast", inline(horizon="1000000000"), 422, "horizon"),
    "not UTF-8": Case("POST", "/forecast", b'{"series": "\xff\xfe"}', 422, "unicode"),
    "UTF-16 JSON": Case(
        "PUT", "/series/m", '{"frequency": "MS"}'.encode("utf-16"), 422, "NUL byte"
    ),
    "JSON deep behind a second content type": Case(
        "POST",
        "/retrain",
        b"[" * 5000 + b"]" * 5000,
        422,
        "deeper than 32",
        more_headers=(("content-type", "text/csv"),),
    ),
    "a 20,000-digit timestamp (body)": Case(
        "POST",
        "/forecast",
        inline().replace(b'"2000-01-01"', b'"' + b"1" * 20_000 + b'x"'),
        422,
        "datetime",
    ),
    "a 20,000-digit timestamp (query)": Case(
        "GET", "/series/m/observations?start=" + "1" * 20_000 + "x", None, 422, "datetime"
    ),
    "not JSON": Case("POST", "/forecast", b"{series: [", 422, "JSON"),
    "more series than the limit": Case(
        "POST",
        "/forecast",
        json.dumps({"series": [{"id": f"s{i}"} for i in range(51)], "horizon": 1}).encode(),
        422,
        "FORECAST_MAX_SERIES_PER_REQUEST",
    ),
    "a history over the limit": Case(
        "POST", "/forecast", inline(", ".join(["1"] * 5001)), 422, "FORECAST_MAX_HISTORY_LENGTH"
    ),
    "more observations than the limit": Case(
        "POST",
        "/series/m/observations",
        rows([f"{2000 + i // 12:04d}-{i % 12 + 1:02d}-01" for i in range(1001)]),
        422,
        "FORECAST_MAX_OBSERVATIONS_PER_REQUEST",
    ),
    "a page over the limit": Case("GET", "/series?limit=101", None, 422, "FORECAST_MAX_PAGE_SIZE"),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with fresh_database("postgresql", tmp_path_factory.mktemp("input")) as url:
        migrate.upgrade(url)
        settings = Settings(
            models_dir=MODELS,
            default_models={"MS": "air_passengers"},
            database_url=url,
            admin_token=ADMIN_TOKEN,
            registry_poll_s=0,
            **LIMITS,
        )
        with serve(settings) as c:
            c.put("/series/m", json={"frequency": "MS"}).raise_for_status()
            yield c


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_a_4xx_within_a_second_and_the_api_answers_after(client, name):
    case = CASES[name]
    headers = [*ADMIN.items(), ("content-type", case.content_type), *case.more_headers]
    started = time.monotonic()
    response = client.request(case.method, case.path, content=case.body, headers=headers)
    took = time.monotonic() - started
    print(f"\n{name}: {response.status_code} in {took * 1000:.0f} ms")
    assert response.status_code == case.status, response.text[:500]
    detail = response.json()["detail"]
    assert case.says in " ".join(d["msg"] for d in detail), detail
    assert took < 1
    assert client.get("/health/live").status_code == 200
    after = client.post("/forecast", content=inline(), headers={"content-type": "application/json"})
    assert after.status_code == 200, after.text


def test_depth_counter_matches_the_parsed_depth_for_any_chunking():
    rng = random.Random(5)

    def generate(level: int) -> object:
        r = rng.random()
        if level > 8 or r < 0.3:
            return rng.choice([1, 2.5, None, True, "a[b{c", 'q"uo\\te]', "\\\\", "}}}", ""])
        if r < 0.65:
            return [generate(level + 1) for _ in range(rng.randint(0, 3))]
        keys = ["k", "[x", "y}\\", '"z']
        return {rng.choice(keys) + str(i): generate(level + 1) for i in range(rng.randint(0, 3))}

    def depth(value: object) -> int:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    for _ in range(3000):
        value = generate(0)
        text = json.dumps(value).encode()
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        counter = JsonDepth()
        deepest = 0
        for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
            deepest = counter.feed(text[start:end])
        assert deepest == depth(value), (text, cuts)


def test_depth_guard_counts_only_when_a_text_could_be_too_deep():
    shallow, deep = b'{"a": [[1], "[[[[[[[[[["]}', b'{"a": "[[[[", "b": [[[[1]]]]}'
    for text, limit, refused in ((shallow, 3, False), (deep, 4, True), (deep, 5, False)):
        for size in (1, 3, len(text)):
            guard = DepthGuard(limit)
            chunks = [text[i : i + size] for i in range(0, len(text), size)]
            assert any([guard.exceeded(c) for c in chunks]) is refused, (text, limit, size)
    guard = DepthGuard(3)
    assert not guard.exceeded(b'{"a": [[1]]}') and guard.depth is None  # never counted
