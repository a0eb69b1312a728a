"""Batch forecasts from a bundle for every series of a long-format CSV.

It runs the service's own code path (routing, short-history fallback, timestamps, quantiles)
over the ONNX bundle, so offline and online forecasts agree by construction.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from service.config import Settings
from service.forecasting import infer, plan_request
from service.inference import load_forecaster
from service.model_set import ModelSet
from service.schemas import ForecastRequest, SeriesInput
from training.data import load_long_csv

CHUNK = 1000  # series per batched inference


def forecast_frame(bundle_dir: Path, data: Path, horizon: int | None = None) -> pd.DataFrame:
    """One row per (unique_id, step): unique_id, ds, method, forecast, then one column per
    quantile (q0.1, q0.5, ...)."""
    forecaster = load_forecaster(str(bundle_dir), "cpu", intra_op_threads=0)
    m = forecaster.manifest
    df = load_long_csv(data, m.frequency)
    models = ModelSet(models={m.name: forecaster})
    settings = Settings(max_series_per_request=CHUNK, max_history_length=10**9)
    series = [
        SeriesInput(id=str(uid), history=g["y"].tolist(), start=g["ds"].iloc[0], freq=m.frequency)
        for uid, g in df.groupby("unique_id", sort=False)
    ]
    rows = []
    for start in range(0, len(series), CHUNK):
        request = ForecastRequest(
            series=series[start : start + CHUNK],
            horizon=horizon or m.horizon,
            model=m.name,
            quantiles=[q for q in m.quantiles if q != 0.5] or None,
        )
        for forecast in infer(plan_request(request, models, settings), request):
            for step, (ts, value) in enumerate(
                zip(forecast.timestamps, forecast.values, strict=True)
            ):
                row = {
                    "unique_id": forecast.id,
                    "ds": ts,
                    "method": forecast.method,
                    "forecast": value,
                }
                for q, values in (forecast.quantiles or {}).items():
                    row[f"q{q}"] = values[step]
                rows.append(row)
    return pd.DataFrame(rows)
