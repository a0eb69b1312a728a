"""The holdout figure logged to MLflow: history, forecast and actuals, per series."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def holdout_figure(
    ids: list[str],
    history: list[pd.Series],
    actuals: list[pd.Series],
    forecasts: dict[str, np.ndarray],
    max_series: int = 4,
) -> Figure:
    """One panel per series (first ``max_series``): history, actuals, each method's forecast."""
    shown = min(len(ids), max_series)
    fig, axes = plt.subplots(shown, 1, figsize=(10, 3.2 * shown), squeeze=False)
    for row in range(shown):
        ax = axes[row, 0]
        ax.plot(history[row].index, history[row].to_numpy(), color="black", lw=1, label="history")
        ax.plot(
            actuals[row].index,
            actuals[row].to_numpy(),
            color="black",
            lw=2,
            ls="--",
            label="actual",
        )
        for method, values in forecasts.items():
            ax.plot(actuals[row].index, values[row], lw=2, label=method)
        ax.set_title(ids[row])
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
