"""Probes, and what the api does when the bundle can't be served."""

from __future__ import annotations

import shutil

from service.bundle import read_bundle
from tests.conftest import AIR_BUNDLE


def test_live(client):
    assert client.get("/health/live").json() == {"status": "alive"}


def test_ready_names_models_versions_and_provider(client):
    manifest = read_bundle(AIR_BUNDLE).manifest
    response = client.get("/health/ready")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert models[manifest.name] == {
        "name": manifest.name,
        "version": manifest.version,
        "frequency": "MS",
        "input_size": manifest.input_size,
        "horizon": manifest.horizon,
        "quantiles": manifest.quantiles,
        "provider": "CPUExecutionProvider",  # this machine has no GPU; auto falls back to CPU
    }


def test_missing_bundle_leaves_the_api_live_but_not_ready(make_client, settings, tmp_path):
    client = make_client(settings.model_copy(update={"models_dir": tmp_path / "nothing"}))
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "no bundle folders" in ready.json()["reason"]
    forecast = client.post(
        "/forecast",
        json={
            "series": [{"id": "a", "history": [1.0] * 30, "start": "2000-01-01", "freq": "MS"}],
            "horizon": 1,
        },
    )
    assert forecast.status_code == 503
    assert forecast.json()["detail"][0]["type"] == "model_not_ready"


def test_corrupt_model_file_is_refused_with_the_checksum_reason(make_client, settings, tmp_path):
    bundle = tmp_path / "models" / "bundle"
    shutil.copytree(AIR_BUNDLE, bundle)
    with (bundle / "model.onnx").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    client = make_client(settings.model_copy(update={"models_dir": bundle.parent}))
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert "sha256" in ready.json()["reason"]


def test_a_bad_bundle_beside_good_ones_is_refused_and_the_others_serve(
    make_client, settings, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(AIR_BUNDLE, models / "good")
    shutil.copytree(AIR_BUNDLE, models / "bad")
    (models / "bad" / "model.onnx").write_bytes(b"corrupt")
    ready = make_client(settings.model_copy(update={"models_dir": models})).get("/health/ready")
    assert ready.status_code == 200
    assert [m["name"] for m in ready.json()["models"]] == ["air_passengers"]
    assert "sha256" in ready.json()["refused"][str(models / "bad")]


def test_cuda_requested_on_a_cpu_machine_is_not_ready_with_the_reason(make_client, settings):
    client = make_client(settings.model_copy(update={"provider": "cuda"}))
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert "provider 'cuda' was requested" in ready.json()["reason"]


def test_database_down_means_not_ready_and_503s_but_inline_forecasts_work(
    make_client, settings, air_history
):
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:9/nothing"}
    )
    client = make_client(down)
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("database unavailable")
    listing = client.get("/series")
    assert listing.status_code == 503
    assert listing.json()["detail"][0]["type"] == "database_unavailable"
    assert listing.headers["retry-after"] == "2"
    inline = client.post(
        "/forecast",
        json={
            "series": [{"id": "a", "history": air_history, "start": "1949-01-01", "freq": "MS"}],
            "horizon": 3,
        },
    )
    assert inline.status_code == 200
