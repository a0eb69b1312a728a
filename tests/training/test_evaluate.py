"""Metrics and the seasonal-naive baseline, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from service.timeindex import seasonal_period
from tests.conftest import AIR_CSV
from training.data import load_long_csv, series_values
from training.evaluate import mae, mase, rmse, score, seasonal_naive, smape

Y = np.array([10.0, 20.0, 30.0])
YHAT = np.array([12.0, 18.0, 33.0])


def test_mae_rmse_by_hand():
    assert mae(Y, YHAT) == pytest.approx((2 + 2 + 3) / 3)
    assert rmse(Y, YHAT) == pytest.approx(np.sqrt((4 + 4 + 9) / 3))


def test_smape_m3_convention_by_hand():
    expected = 100 / 3 * (2 * 2 / 22 + 2 * 2 / 38 + 2 * 3 / 63)
    assert smape(Y, YHAT) == pytest.approx(expected)
    assert smape(np.zeros(2), np.zeros(2)) == 0.0  # 0/0 counts as a perfect forecast


def test_mase_by_hand():
    insample = np.array([1.0, 2.0, 4.0, 7.0])  # m=1 naive errors: 1, 2, 3 -> scale 2
    assert mase(Y, YHAT, insample, m=1) == pytest.approx((7 / 3) / 2)
    insample_seasonal = np.array([1.0, 5.0, 2.0, 7.0, 4.0, 8.0])  # m=2 errors: 1, 2, 2, 1 -> 1.5
    assert mase(Y, YHAT, insample_seasonal, m=2) == pytest.approx((7 / 3) / 1.5)
    with pytest.raises(ValueError, match="more than m"):
        mase(Y, YHAT, np.array([1.0, 2.0]), m=2)


def test_seasonal_naive_repeats_the_last_season():
    insample = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(seasonal_naive(insample, 5, m=2), [4, 5, 4, 5, 4])


def test_seasonal_naive_on_air_passengers_1960_is_47_8():
    values = series_values(load_long_csv(AIR_CSV, freq="MS"))["AirPassengers"].astype(float)
    forecast = seasonal_naive(values[:-12], 12, m=12)
    np.testing.assert_array_equal(forecast, values[-24:-12])
    metrics = score(values[None, -12:], forecast[None], [values[:-12]], m=12)
    assert metrics["mae"] == pytest.approx(47.8333, abs=1e-3)


@pytest.mark.parametrize(
    ("freq", "m"), [("MS", 12), ("QS", 4), ("D", 7), ("h", 24), ("15min", 96), ("YS", 1)]
)
def test_seasonal_period(freq, m):
    assert seasonal_period(freq) == m


def test_a_flat_series_leaves_mase_defined_over_the_others():
    actuals = np.array([[10.0, 12.0], [5.0, 5.0]])
    forecasts = np.array([[11.0, 12.0], [5.0, 6.0]])
    insample = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 5.0, 5.0, 5.0])]  # 2nd: flat
    result = score(actuals, forecasts, insample, m=1)
    assert result["mase"] == pytest.approx(0.5)  # series 1 only: MAE 0.5 / scale 1
    assert result["mae"] == pytest.approx(0.5)  # both series: (0.5 + 0.5) / 2
