"""POST /forecast over real HTTP against the shipped AirPassengers bundle."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from service.bundle import read_bundle
from service.schemas import ForecastResponse
from tests.conftest import AIR_BUNDLE

MANIFEST = read_bundle(AIR_BUNDLE).manifest
L, H = MANIFEST.input_size, MANIFEST.horizon


def body(history: list[float], horizon: int = 12, **series: object) -> dict[str, object]:
    one = {"id": "air", "history": history, "start": "1949-01-01", "freq": "MS", **series}
    return {"series": [one], "horizon": horizon}


def reference_forecast(window: list[float], month: int = 1) -> np.ndarray:
    """The bundle run directly in onnxruntime, outside the service: (H,) point forecast.
    ``month``: of the first forecast step (the bundle reads the month of year)."""
    session = ort.InferenceSession(
        str(AIR_BUNDLE / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {"y": np.asarray([window], dtype=np.float32)}
    if MANIFEST.covariates == ["month_of_year"]:
        feed["season_position"] = np.asarray([month - 1], dtype=np.float32)
    (out,) = session.run(None, feed)
    return out[0, :, MANIFEST.point_quantile_index]


def test_forecast_returns_12_monthly_values_for_1961(client, air_history):
    response = client.post("/forecast", json=body(air_history))
    assert response.status_code == 200, response.text
    (forecast,) = response.json()["forecasts"]
    assert forecast["id"] == "air"
    assert forecast["method"] == "model"
    assert forecast["model"] == {"name": MANIFEST.name, "version": MANIFEST.version}
    assert forecast["timestamps"] == [f"1961-{m:02d}-01" for m in range(1, 13)]
    np.testing.assert_allclose(forecast["values"], reference_forecast(air_history[-L:]), rtol=1e-6)
    # The model has learned the level and the summer peak of the series, not noise.
    values = np.array(forecast["values"])
    assert 300 < values.mean() < 700
    assert values.argmax() in (6, 7)  # July or August


def test_shorter_horizon_is_a_prefix_of_the_full_one(client, air_history):
    full = client.post("/forecast", json=body(air_history, 12)).json()["forecasts"][0]
    short = client.post("/forecast", json=body(air_history, 3)).json()["forecasts"][0]
    assert short["timestamps"] == full["timestamps"][:3]
    assert short["values"] == full["values"][:3]


def test_several_series_in_one_request_match_single_requests(client, air_history):
    histories = [air_history, air_history[:-12], [v * 10 for v in air_history[:100]]]
    starts = ["1949-01-01", "1949-01-01", "1950-03-01"]
    batch = {
        "series": [
            {"id": f"s{i}", "history": h, "start": s, "freq": "MS"}
            for i, (h, s) in enumerate(zip(histories, starts, strict=True))
        ],
        "horizon": 6,
    }
    together = client.post("/forecast", json=batch).json()["forecasts"]
    assert [f["id"] for f in together] == ["s0", "s1", "s2"]
    for i, (history, start) in enumerate(zip(histories, starts, strict=True)):
        alone = client.post("/forecast", json=body(history, 6, start=start)).json()["forecasts"][0]
        np.testing.assert_allclose(together[i]["values"], alone["values"], rtol=1e-5)
        assert together[i]["timestamps"] == alone["timestamps"]
    assert together[1]["timestamps"][0] == "1960-01-01"
    assert together[2]["timestamps"][0] == "1958-07-01"  # 100 months after 1950-03


def test_large_batch_runs_off_the_event_loop_and_matches(client, air_history):
    """Above inline_batch_max the inference goes to the thread pool; results are the same."""
    series = [
        {"id": str(i), "history": [v + i for v in air_history], "start": "1949-01-01", "freq": "MS"}
        for i in range(200)
    ]
    response = client.post("/forecast", json={"series": series, "horizon": 12})
    assert response.status_code == 200, response.text
    forecasts = response.json()["forecasts"]
    assert len(forecasts) == 200
    np.testing.assert_allclose(
        forecasts[37]["values"], reference_forecast([v + 37 for v in air_history[-L:]]), rtol=1e-5
    )


def test_freq_may_be_left_out_when_the_model_is_named(client, air_history):
    explicit = client.post("/forecast", json=body(air_history)).json()
    implicit_body = body(air_history)
    del implicit_body["series"][0]["freq"]  # type: ignore[index]
    without = client.post("/forecast", json=implicit_body)
    assert without.status_code == 422 and "freq is required" in without.json()["detail"][0]["msg"]
    implicit_body["model"] = "air_passengers"
    assert client.post("/forecast", json=implicit_body).json() == explicit


def test_unknown_model_is_422_listing_the_loaded_ones(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history) | {"model": "nope"}))
    assert detail["loc"] == ["body", "model"] and "air_passengers" in detail["msg"]


def _error(response) -> dict[str, object]:
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    return detail


def test_history_shorter_than_input_window_gets_seasonal_naive_marked_as_such(client, air_history):
    short = air_history[: L - 1]  # 23 months from 1949-01
    forecast = client.post("/forecast", json=body(short, 12)).json()["forecasts"][0]
    assert forecast["method"] == "seasonal_naive" and forecast["model"] is None
    assert forecast["values"] == short[-12:]  # the last full season, repeated
    assert forecast["timestamps"][0] == "1950-12-01"
    tiny = client.post("/forecast", json=body(air_history[:5], 3)).json()["forecasts"][0]
    assert tiny["method"] == "naive" and tiny["values"] == [air_history[4]] * 3


def test_strict_mode_refuses_a_short_history_naming_the_limit(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history[: L - 1]) | {"strict": True}))
    assert detail["loc"] == ["body", "series", 0, "history"]
    assert f"needs at least {L}" in detail["msg"] and f"has {L - 1} values" in detail["msg"]


def test_horizon_above_the_models_is_422_naming_the_limit(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history, H + 1)))
    assert detail["loc"] == ["body", "horizon"]
    assert f"horizon of {H}" in detail["msg"]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_422_naming_the_element(client, air_history, bad):
    text = json.dumps(body(air_history)).replace("112.0", bad, 1)
    response = client.post("/forecast", content=text, headers={"content-type": "application/json"})
    detail = _error(response)
    assert detail["loc"] == ["body", "series", 0, "history", 0]
    assert "finite" in detail["msg"]


def test_values_beyond_float32_are_422(client, air_history):
    detail = _error(client.post("/forecast", json=body([*air_history[:-1], 1e300])))
    assert detail["loc"] == ["body", "series", 0, "history"]
    assert "float32" in detail["msg"]


def test_forecasts_the_model_cant_scale_are_422_naming_the_series(client, air_history):
    """Values within float32 but near its limit: the model's forecast overflows. The series
    is named by its place, whichever batch it ran in."""
    huge = [float(v) for v in np.linspace(1.5e38, 3e38, L)]  # a steep climb
    fine = body(air_history)["series"]
    request = {"series": [*fine, *body(huge)["series"]], "horizon": 12}
    detail = _error(client.post("/forecast", json=request))
    assert detail["loc"] == ["body", "series", 1, "history"]
    assert "non-finite forecasts" in detail["msg"]
    alone = client.post("/forecast", json=body(air_history))
    assert alone.status_code == 200 and alone.json()["forecasts"][0]["values"][0] > 0


def test_unknown_frequency_is_422(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history, freq="fortnightly")))
    assert detail["loc"] == ["body", "series", 0, "freq"]
    assert "unknown frequency 'fortnightly'" in detail["msg"]


def test_frequency_the_model_does_not_serve_is_422_naming_what_it_serves(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history, freq="D")))
    assert detail["type"] == "frequency_not_served"
    assert "the models serve [" in detail["msg"] and "'MS'" in detail["msg"]
    named = _error(
        client.post("/forecast", json=body(air_history, freq="D") | {"model": "air_passengers"})
    )
    assert "which serves 'MS'" in named["msg"]


def test_start_off_the_frequency_is_422(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history, start="1949-01-15")))
    assert detail["loc"] == ["body", "series", 0, "start"]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"series": [], "horizon": 12}, ["body", "series"]),
        (
            {"series": [{"id": "a", "history": [1.0], "start": "1949-01-01"}], "horizon": 0},
            ["body", "horizon"],
        ),
        (
            {"series": [{"id": "a", "history": "x", "start": "1949-01-01"}], "horizon": 1},
            ["body", "series", 0, "history"],
        ),
        ({"series": [{"id": "a", "history": [1.0]}], "horizon": 1}, ["body", "series", 0]),
        ({"series": [{"id": "a", "start": "1949-01-01"}], "horizon": 1}, ["body", "series", 0]),
    ],
)
def test_malformed_requests_are_422_naming_the_field(client, payload, loc):
    response = client.post("/forecast", json=payload)
    assert response.status_code == 422
    assert loc in [d["loc"] for d in response.json()["detail"]]
    if loc == ["body", "series", 0]:
        assert "start" in response.json()["detail"][0]["msg"]


def test_too_many_series_is_422_naming_the_setting(make_client, settings, air_history):
    small = make_client(settings.model_copy(update={"max_series_per_request": 2}))
    payload = body(air_history)
    payload["series"] = payload["series"] * 3  # type: ignore[operator]
    detail = _error(small.post("/forecast", json=payload))
    assert "limit is 2" in detail["msg"] and "FORECAST_MAX_SERIES_PER_REQUEST" in detail["msg"]


def test_openapi_documents_the_forecast_example(client):
    schema = client.get("/openapi.json").json()
    examples = schema["components"]["schemas"]["ForecastRequest"]["examples"]
    assert examples[0] == {"series": [{"id": "air"}], "horizon": 12}  # a stored series
    assert examples[1]["series"][0]["freq"] == "MS"  # an inline history
    upload = schema["paths"]["/series/{series_id}/observations"]["post"]["requestBody"]
    assert set(upload["content"]) == {"application/json", "text/csv"}


def test_quantiles_and_levels_come_beside_the_point_forecast(client, air_history):
    response = client.post("/forecast", json=body(air_history) | {"quantiles": [0.1, 0.9]})
    forecast = response.json()["forecasts"][0]
    assert set(forecast["quantiles"]) == {"0.1", "0.9"}
    low, high, point = (
        np.array(forecast["quantiles"]["0.1"]),
        np.array(forecast["quantiles"]["0.9"]),
        np.array(forecast["values"]),
    )
    assert (low <= point).all() and (point <= high).all()  # never crossing
    assert (high - low > 0).all()
    by_level = client.post("/forecast", json=body(air_history) | {"level": [80]}).json()
    assert by_level["forecasts"][0]["quantiles"] == forecast["quantiles"]


def test_a_quantile_the_model_lacks_is_422_listing_the_ones_it_has(client, air_history):
    detail = _error(client.post("/forecast", json=body(air_history) | {"quantiles": [0.25]}))
    assert detail["type"] == "quantile_not_served"
    assert f"it has {MANIFEST.quantiles}" in detail["msg"]
    level = _error(client.post("/forecast", json=body(air_history) | {"level": [95]}))
    assert level["loc"] == ["body", "level"] and "0.025" in level["msg"]


def test_fallback_series_carry_no_quantiles(client, air_history):
    forecast = client.post("/forecast", json=body(air_history[:13]) | {"quantiles": [0.1]}).json()[
        "forecasts"
    ][0]
    assert forecast["method"] == "seasonal_naive" and forecast["quantiles"] is None


def test_the_body_is_byte_for_byte_the_documented_forecast_response(client, air_history):
    """The forecast path writes plain data with orjson, not ForecastResponse objects: its JSON
    must be what the documented model itself writes, for model and fallback series, with and
    without quantiles, and for ids that need escaping or are not ASCII."""
    odd_id = 'model "quoted" \\ tab\t ctl\x01 del\x7f \u00e9\u6f22\U0001f642 \u2028 </script>'
    series = [
        {"id": odd_id, "history": air_history, "start": "1949-01-01", "freq": "MS"},
        # Large values: the fallback's floats in exponent notation.
        {
            "id": "short",
            "history": [v * 1e18 for v in air_history[:13]],
            "start": "1949-01-01",
            "freq": "MS",
        },
    ]
    for extra in ({}, {"quantiles": [0.1, 0.9]}):
        response = client.post("/forecast", json={"series": series, "horizon": 6, **extra})
        assert response.status_code == 200, response.text
        served = ForecastResponse.model_validate_json(response.content)
        assert [f.method for f in served.forecasts] == ["model", "seasonal_naive"]
        assert served.forecasts[0].id == odd_id
        assert b"1.18e+20" in response.content  # exponent notation, as pydantic writes it
        assert (served.forecasts[0].quantiles is None) == (not extra)
        assert response.content == served.model_dump_json().encode()


QUARTERLY = [float(100 + 10 * (i % 4) + i) for i in range(40)]


def test_series_are_routed_to_the_model_for_their_frequency(client, air_history):
    mixed = {
        "series": [
            {"id": "q", "history": QUARTERLY, "start": "2000-01-01", "freq": "QS"},
            {"id": "m", "history": air_history, "start": "1949-01-01", "freq": "MS"},
        ],
        "horizon": 4,
    }
    q, m = client.post("/forecast", json=mixed).json()["forecasts"]
    assert q["model"]["name"] == "m3_quarterly" and m["model"]["name"] == "air_passengers"
    assert q["timestamps"] == ["2010-01-01", "2010-04-01", "2010-07-01", "2010-10-01"]
    assert m["timestamps"][0] == "1961-01-01"
    assert 100 < np.mean(q["values"]) < 250  # continues the level of the series


def test_a_log_model_refuses_non_positive_values(client):
    history = [*QUARTERLY[:-1], -5.0]
    detail = _error(
        client.post(
            "/forecast",
            json={
                "series": [{"id": "q", "history": history, "start": "2000-01-01", "freq": "QS"}],
                "horizon": 2,
            },
        )
    )
    assert "needs values > 0" in detail["msg"] and detail["loc"] == ["body", "series", 0, "history"]
