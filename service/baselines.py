"""Statistical baselines the service itself can compute (no model needed)."""

from __future__ import annotations

import numpy as np


def seasonal_naive(insample: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """Repeat the last full season: yhat[t] = y[T - m + (t mod m)]. With fewer than m values
    it is the naive forecast (the last value repeated)."""
    last_season = insample[-m:] if len(insample) >= m else insample[-1:]
    reps = int(np.ceil(horizon / len(last_season)))
    return np.tile(last_season, reps)[:horizon]
