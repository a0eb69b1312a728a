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


def mape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Mean absolute percentage error in percent (undefined where y is 0: those steps drop)."""
    nonzero = y != 0
    return float(100.0 * np.mean(np.abs((y[nonzero] - yhat[nonzero]) / y[nonzero])))


def mase(y: np.ndarray, yhat: np.ndarray, insample: np.ndarray, m: int) -> float:
    """MAE scaled by the in-sample MAE of the seasonal-naive forecast with period m."""
    if len(insample) <= m:
        raise ValueError(f"MASE needs more than m={m} in-sample values, got {len(insample)}")
    scale = np.mean(np.abs(insample[m:] - insample[:-m]))
    return float(mae(y, yhat) / scale) if scale > 0 else float("nan")


def seasonal_scale(insample: np.ndarray, m: int) -> float:
    """In-sample MAE of the seasonal-naive forecast: the denominator of MASE."""
    return float(np.mean(np.abs(insample[m:] - insample[:-m])))


def interval_metrics(
    actuals: np.ndarray,
    output: np.ndarray,
    quantiles: Sequence[float],
    insample: Sequence[np.ndarray],
    m: int,
) -> dict[str, float]:
    """Empirical coverage (%) of the central 80% interval (quantiles 0.1 and 0.9, when present)
    and the mean pinball loss over all quantiles, scaled per series like MASE.

    actuals (S, H); output (S, H, Q).
    """
    result: dict[str, float] = {}
    q = list(quantiles)
    if 0.1 in q and 0.9 in q:
        low, high = output[:, :, q.index(0.1)], output[:, :, q.index(0.9)]
        result["coverage_80"] = float(100.0 * np.mean((actuals >= low) & (actuals <= high)))
    if len(q) > 1:
        levels = np.asarray(q)[None, None, :]
        error = actuals[:, :, None] - output  # (S, H, Q)
        loss = np.maximum(levels * error, (levels - 1) * error).mean(axis=(1, 2))  # (S,)
        scales = np.array([seasonal_scale(s, m) for s in insample])
        result["scaled_pinball"] = float(np.mean(loss[scales > 0] / scales[scales > 0]))
    return result


METRICS = ("mae", "rmse", "smape", "mape", "mase", "coverage_80", "scaled_pinball")


def score(
    actuals: np.ndarray,
    forecasts: np.ndarray,
    insample: Sequence[np.ndarray],
    m: int,
) -> dict[str, float]:
    """Mean over series of each metric. actuals and forecasts are (S, H).

    A series where a metric is undefined (MASE of a series whose history never changes) is
    left out of that metric's mean rather than turning it into NaN: one flat series must not
    hide how a model does on all the others."""
    per_metric: dict[str, Callable[[int], float]] = {
        "mae": lambda i: mae(actuals[i], forecasts[i]),
        "rmse": lambda i: rmse(actuals[i], forecasts[i]),
        "smape": lambda i: smape(actuals[i], forecasts[i]),
        "mape": lambda i: mape(actuals[i], forecasts[i]),
        "mase": lambda i: mase(actuals[i], forecasts[i], insample[i], m),
    }
    result = {}
    for name, fn in per_metric.items():
        values = np.array([fn(i) for i in range(len(actuals))], dtype=float)
        defined = values[np.isfinite(values)]
        result[name] = float(defined.mean()) if len(defined) else float("nan")
    return result


def format_table(results: dict[str, dict[str, float]], title: str) -> str:
    """Methods as rows, metrics as columns (those any row has), as a markdown table."""
    columns = [m for m in METRICS if any(m in vals for vals in results.values())]
    header = f"| {'method':<16} | " + " | ".join(f"{c.upper():>14}" for c in columns) + " |"
    rule = "|" + "-" * 18 + "|" + "|".join("-" * 16 for _ in columns) + "|"
    rows = [
        f"| {method:<16} | "
        + " | ".join(f"{vals[c]:>14.3f}" if c in vals else f"{'-':>14}" for c in columns)
        + " |"
        for method, vals in results.items()
    ]
    return "\n".join([title, header, rule, *rows])
