"""Loading bundles into onnxruntime: validation against the manifest, provider choice."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from service.bundle import MANIFEST_FILE, BundleError, read_bundle, sha256_file, write_bundle
from service.inference import CHUNK_ROWS, CPU, choose_providers, load_forecaster
from tests.conftest import AIR_BUNDLE


def test_shipped_bundle_loads_and_predicts_any_batch_size():
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", intra_op_threads=1)
    m = forecaster.manifest
    for batch in (1, 3, 256):
        windows = (
            np.random.default_rng(batch).uniform(100, 600, (batch, m.input_size)).astype(np.float32)
        )
        months = np.arange(batch, dtype=np.float32) % 12  # the bundle reads the month of year
        out = forecaster.predict(windows, months)
        assert out.shape == (batch, m.horizon, len(m.quantiles))
        assert np.isfinite(out).all()


def test_a_large_batch_runs_in_chunks_and_equals_one_session_call():
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", intra_op_threads=1)
    m = forecaster.manifest
    batch = 3 * CHUNK_ROWS + 5  # three whole chunks and a short one
    windows = np.random.default_rng(0).uniform(100, 600, (batch, m.input_size)).astype(np.float32)
    months = np.arange(batch, dtype=np.float32) % 12
    assert forecaster.chunk_rows == CHUNK_ROWS
    (whole,) = forecaster.session.run(None, {"y": windows, m.inputs[1].name: months})
    chunked = forecaster.predict(windows, months)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)
    # Each row is its own series' forecast: no chunk's rows came back in another's place.
    np.testing.assert_allclose(
        chunked[-1:], forecaster.predict(windows[-1:], months[-1:]), rtol=1e-5
    )


def test_auto_provider_is_cpu_without_cuda():
    expected = (
        ["CUDAExecutionProvider", CPU]
        if "CUDAExecutionProvider" in ort.get_available_providers()
        else [CPU]
    )
    assert choose_providers("auto") == expected
    assert choose_providers("cpu") == [CPU]


def test_manifest_that_disagrees_with_the_graph_is_refused(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(AIR_BUNDLE, bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["input_size"] += 1
    manifest["inputs"][0]["shape"][1] += 1
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_forecaster(str(bundle), "cpu", 1)


def test_read_bundle_verifies_the_checksum(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(AIR_BUNDLE, bundle)
    (bundle / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(bundle)


def test_write_bundle_replaces_the_old_one_whole(tmp_path):
    original = read_bundle(AIR_BUNDLE)
    data = original.model_path.read_bytes()
    target = tmp_path / "air"
    write_bundle(target, data, original.manifest)
    newer = original.manifest.model_copy(update={"version": "2"})
    written = write_bundle(target, data, newer)
    assert written.manifest.version == "2"
    assert sha256_file(target / "model.onnx") == original.manifest.onnx_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["air"]  # no staging or old folders left
    with pytest.raises(BundleError, match="does not match the model bytes"):
        write_bundle(target, b"other bytes", newer)
    assert read_bundle(target).manifest.version == "2"  # a refused write leaves it untouched


def test_a_covariate_the_service_cannot_compute_is_refused(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(AIR_BUNDLE, bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    assert manifest["covariates"] == ["month_of_year"]  # the shipped example reads the calendar
    manifest["covariates"] = ["day_of_week"]  # not what a monthly model's position means
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="can't be computed for frequency 'MS'"):
        load_forecaster(str(bundle), "cpu", 1)
