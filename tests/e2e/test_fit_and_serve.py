"""End to end: the CLI trains on the shipped CSV, logs to MLflow, writes a bundle; the api
started as its own process serves that bundle over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from service.bundle import read_bundle
from tests.conftest import AIR_CSV, READ, REPO, start_api_process

pytestmark = pytest.mark.slow


def run_fit(
    out: Path, cwd: Path, extra_env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    # Without MLFLOW_TRACKING_URI the CLI uses its embedded default store under cwd/var.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = {**inherited, "PYTHONPATH": str(REPO), **extra_env}
    command = [
        sys.executable,
        "-m",
        "training",
        "fit",
        "--data",
        str(AIR_CSV),
        "--horizon",
        "12",
        "--freq",
        "MS",
        "--name",
        "air_e2e",
        "--out",
        str(out),
        "--input-size",
        "24",
        "--hidden-size",
        "16",
        "--no-progress",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short fit with the embedded default store (var/ under the working directory): logs,
    the gated seasonal profile and the month-of-year covariate, refit after early stopping."""
    work = tmp_path_factory.mktemp("fit")
    done = run_fit(
        work / "models" / "air_e2e",
        work,
        {},
        "--max-epochs",
        "8",
        "--transform",
        "log",
        "--season-length",
        "12",
        "--season-gate",
        "--calendar",
    )
    assert done.returncode == 0, done.stderr
    return work, done.stdout


def test_cli_prints_lstm_and_seasonal_naive_metrics(trained):
    _, stdout = trained
    lines = {
        line.split("|")[1].strip(): line for line in stdout.splitlines() if line.startswith("| ")
    }
    assert set(lines) >= {"method", "lstm", "seasonal_naive"}
    columns = [c.strip() for c in lines["method"].split("|")[2:-1]]
    assert columns == ["MAE", "RMSE", "SMAPE", "MAPE", "MASE", "COVERAGE_80", "SCALED_PINBALL"]
    assert float(lines["seasonal_naive"].split("|")[2]) == pytest.approx(47.833, abs=1e-3)
    assert "bundle air_e2e version 1" in stdout


def test_bundle_records_the_run_and_passes_parity(trained):
    work, _ = trained
    manifest = read_bundle(work / "models" / "air_e2e").manifest
    assert (manifest.input_size, manifest.horizon, manifest.frequency) == (24, 12, "MS")
    assert manifest.parity.max_scaled_diff <= manifest.parity.tolerance
    assert set(manifest.metrics) == {"lstm", "seasonal_naive"}
    assert manifest.covariates == ["month_of_year"]
    assert [t.name for t in manifest.inputs] == ["y", "season_position"]
    (member,) = manifest.training["members"]
    assert manifest.training["refit"] and member["refit_epochs"] == member["best_epoch"]
    assert manifest.training_data.n_observations == 144
    assert manifest.mlflow is not None and manifest.mlflow.registered_model_version == "1"


def test_mlflow_run_has_params_loss_curves_metrics_plot_and_a_registered_version(trained):
    work, _ = trained
    manifest = read_bundle(work / "models" / "air_e2e").manifest
    assert manifest.mlflow is not None
    assert (work / "var" / "mlflow.db").is_file()  # the embedded default store
    client = mlflow.MlflowClient(f"sqlite:///{work / 'var' / 'mlflow.db'}")
    run = client.get_run(manifest.mlflow.run_id)
    assert run.data.params["model.input_size"] == "24"
    assert run.data.params["train.seed"] == "0"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 8
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 8
    # The refit: as many epochs as early stopping chose, on windows through validation.
    best = int(run.data.metrics["best_epoch"])
    assert len(client.get_metric_history(run.info.run_id, "refit_train_loss")) == best
    assert not client.get_metric_history(run.info.run_id, "refit_val_loss")
    assert run.data.metrics["holdout_seasonal_naive_mae"] == pytest.approx(47.833, abs=1e-3)
    assert "holdout_lstm_mase" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"holdout.png", "holdout_metrics.md", "bundle", "checkpoint"} <= artifacts
    png = Path(client.download_artifacts(run.info.run_id, "holdout.png", str(work)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    version = client.get_model_version("air_e2e", "1")
    assert version.run_id == run.info.run_id and version.status == "READY"


def test_api_process_serves_the_new_bundle_and_never_loads_torch(trained):
    work, _ = trained
    proc, base = start_api_process(
        {"FORECAST_MODELS_DIR": str(work / "models")}, work, capture=True
    )
    try:
        history = pd.read_csv(AIR_CSV)["y"].tolist()
        response = httpx.post(
            f"{base}/forecast",
            json={
                "series": [{"id": "air", "history": history, "start": "1949-01-01", "freq": "MS"}],
                "horizon": 12,
                "level": [80],
            },
            headers=READ,
        )
        assert response.status_code == 200, response.text
        forecast = response.json()["forecasts"][0]
        assert forecast["model"] == {"name": "air_e2e", "version": "1"}
        assert forecast["timestamps"][0] == "1961-01-01" and len(forecast["values"]) == 12
        assert np.isfinite(forecast["values"]).all()
        low, high = forecast["quantiles"]["0.1"], forecast["quantiles"]["0.9"]
        assert all(lo <= v <= hi for lo, v, hi in zip(low, forecast["values"], high, strict=True))
        # No torch shared library is mapped into the serving process.
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps, "the api process loaded torch"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "loaded model air_e2e version 1 on CPUExecutionProvider" in output
