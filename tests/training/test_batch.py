"""python -m training forecast: every series of a CSV, through the service's own code path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from service.inference import load_forecaster
from tests.conftest import AIR_BUNDLE, AIR_CSV, REPO


def test_forecast_cli_writes_one_row_per_series_and_step(tmp_path):
    air = pd.read_csv(AIR_CSV)
    short = air.head(15).assign(unique_id="short")  # shorter than the input window
    data = tmp_path / "two.csv"
    pd.concat([air, short]).to_csv(data, index=False)
    out = tmp_path / "forecasts.csv"
    done = subprocess.run(
        [sys.executable, "-m", "training", "forecast", "--bundle", str(AIR_BUNDLE),
         "--data", str(data), "--out", str(out), "--horizon", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["unique_id", "ds", "method", "forecast", "q0.1", "q0.9"]
    air_rows = frame[frame["unique_id"] == "AirPassengers"]
    assert list(air_rows["ds"]) == [f"1961-{m:02d}-01" for m in range(1, 7)]
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    window = air["y"].to_numpy(np.float32)[None, -forecaster.manifest.input_size :]
    january = np.zeros(1, np.float32)  # 1961-01: the first forecast month
    expected = forecaster.predict(window, january)[0, :6]
    np.testing.assert_allclose(air_rows["forecast"], expected[:, 1], rtol=1e-6)
    np.testing.assert_allclose(air_rows["q0.9"], expected[:, 2], rtol=1e-6)
    short_rows = frame[frame["unique_id"] == "short"]
    assert set(short_rows["method"]) == {"seasonal_naive"}
    assert list(short_rows["forecast"]) == list(air["y"][3:9].astype(float))  # the last season
