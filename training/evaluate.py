"""Forecast accuracy metrics and the seasonal-naive baseline every model is scored against.

Every metric takes one series' actuals and forecasts (shape (H,)); ``score`` averages a
metric over series, as the M competitions do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from service.baselines import seasonal_naive

__all__ = ["mae", "mase", "rmse", "score", "seasonal_naive", "smape"]


def mae(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.mean(np.abs(y - yhat)))


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - yhat) ** 2)))


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Symmetric MAPE in percent, M3 convention: mean of 200*|y - yhat| / (|y| + |yhat|)."""
    denom = np.abs(y) + np.abs(yhat)
    ratio = np.divide(
        2.0 * np.abs(y - yhat), denom, out=np.zeros_like(denom, dtype=float), where=denom > 0
    )
    return float(100.0 * np.mean(ratio))


def mase(y: np.ndarray, yhat: np.ndarray, insample: np.ndarray, m: int) -> float:
    """MAE scaled by the in-sample MAE of the seasonal-naive forecast with period m."""
    if len(insample) <= m:
        raise ValueError(f"MASE needs more than m={m} in-sample values, got {len(insample)}")
    scale = np.mean(np.abs(insample[m:] - insample[:-m]))
    return float(mae(y, yhat) / scale) if scale > 0 else float("nan")


METRICS = ("mae", "rmse", "smape", "mase")


def score(
    actuals: np.ndarray,
    forecasts: np.ndarray,
    insample: Sequence[np.ndarray],
    m: int,
) -> dict[str, float]:
    """Mean over series of each metric. actuals and forecasts are (S, H)."""
    per_metric: dict[str, Callable[[int], float]] = {
        "mae": lambda i: mae(actuals[i], forecasts[i]),
        "rmse": lambda i: rmse(actuals[i], forecasts[i]),
        "smape": lambda i: smape(actuals[i], forecasts[i]),
        "mase": lambda i: mase(actuals[i], forecasts[i], insample[i], m),
    }
    return {
        name: float(np.mean([fn(i) for i in range(len(actuals))]))
        for name, fn in per_metric.items()
    }


def format_table(results: dict[str, dict[str, float]], title: str) -> str:
    """Methods as rows, metrics as columns, as a fixed-width text (and markdown) table."""
    header = f"| {'method':<16} | " + " | ".join(f"{m.upper():>8}" for m in METRICS) + " |"
    rule = "|" + "-" * 18 + "|" + "|".join("-" * 10 for _ in METRICS) + "|"
    rows = [
        f"| {method:<16} | " + " | ".join(f"{vals[m]:>8.3f}" for m in METRICS) + " |"
        for method, vals in results.items()
    ]
    return "\n".join([title, header, rule, *rows])
