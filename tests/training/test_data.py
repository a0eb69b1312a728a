"""Windows and splits over the long format, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import AIR_CSV
from training.data import (
    DataError,
    SeriesCalendar,
    holdout_split,
    load_long_csv,
    series_values,
    sliding_windows,
)


def test_sliding_windows_by_hand():
    x, y = sliding_windows(np.arange(1, 8, dtype=np.float32), input_size=3, horizon=2)
    # 7 values, L=3, H=2 -> 7 - 3 - 2 + 1 = 3 windows
    np.testing.assert_array_equal(x, [[1, 2, 3], [2, 3, 4], [3, 4, 5]])
    np.testing.assert_array_equal(y, [[4, 5], [5, 6], [6, 7]])


def test_sliding_windows_too_short_is_empty():
    x, y = sliding_windows(np.arange(4, dtype=np.float32), input_size=3, horizon=2)
    assert x.shape == (0, 3) and y.shape == (0, 2)


def test_holdout_split_by_hand():
    values = np.arange(1, 13, dtype=np.float32)  # 1..12
    split = holdout_split({"a": values}, input_size=3, horizon=2)
    np.testing.assert_array_equal(split.test_y, [[11, 12]])
    np.testing.assert_array_equal(split.test_x, [[8, 9, 10]])
    np.testing.assert_array_equal(split.val_y, [[9, 10]])
    np.testing.assert_array_equal(split.val_x, [[6, 7, 8]])
    # Training targets end at 8: nothing from validation or test leaks in.
    np.testing.assert_array_equal(split.train_y[-1], [7, 8])
    assert split.train_x.shape == (4, 3)  # 8 - 3 - 2 + 1
    np.testing.assert_array_equal(split.insample[0], values[:10])


def test_holdout_split_refuses_short_series():
    with pytest.raises(DataError, match="fewer than 9 values"):
        holdout_split({"a": np.arange(8, dtype=np.float32)}, input_size=3, horizon=2)


def test_air_passengers_csv_is_144_monthly_values():
    df = load_long_csv(AIR_CSV, freq="MS")
    values = series_values(df)["AirPassengers"]
    assert len(values) == 144 and values[0] == 112 and values[-1] == 432
    assert values.sum() == 40363
    assert (
        str(df["ds"].iloc[0].date()) == "1949-01-01"
        and str(df["ds"].iloc[-1].date()) == "1960-12-01"
    )


def test_loader_reads_many_series_and_sorts_them(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text(
        "unique_id,ds,y\nb,2000-02-01,4\na,2000-01-01,1\nb,2000-01-01,3\na,2000-02-01,2\n"
    )
    df = load_long_csv(path, freq="MS")
    assert {k: v.tolist() for k, v in series_values(df).items()} == {"a": [1, 2], "b": [3, 4]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,ds,y\na,2000-01-01,1\n", "missing column"),
        ("unique_id,ds,y\na,2000-01-01,1\na,2000-01-01,2\n", "duplicate"),
        ("unique_id,ds,y\na,2000-01-01,1\na,2000-03-01,2\n", "not regular at MS"),
        ("unique_id,ds,y\na,2000-01-01,x\n", "finite y"),
        ("unique_id,ds,y\na,2000-01-01,inf\n", "finite y"),
    ],
)
def test_loader_names_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_long_csv(path, freq="MS")


def test_padded_windows_by_hand():
    x, y = sliding_windows(
        np.arange(1, 6, dtype=np.float32), input_size=3, horizon=2, min_observed=1
    )
    # padded to [1, 1, 1, 2, 3, 4, 5]: windows keep >= 1 real input and real targets
    np.testing.assert_array_equal(x, [[1, 1, 1], [1, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(y, [[2, 3], [3, 4], [4, 5]])


def test_holdout_split_pads_short_series_when_allowed():
    values = np.arange(1, 9, dtype=np.float32)  # 8 values, L=4, H=2: too short unpadded
    with pytest.raises(DataError):
        holdout_split({"a": values}, input_size=4, horizon=2)
    split = holdout_split({"a": values}, input_size=4, horizon=2, min_observed=2)
    np.testing.assert_array_equal(split.test_x, [[3, 4, 5, 6]])
    np.testing.assert_array_equal(split.val_x, [[1, 2, 3, 4]])
    # Training targets stop before the validation targets (5, 6): one padded window fits.
    np.testing.assert_array_equal(split.train_x, [[1, 1, 1, 2]])
    np.testing.assert_array_equal(split.train_y, [[3, 4]])


def test_refit_split_trains_through_the_validation_window():
    values = np.arange(1, 13, dtype=np.float32)  # 1..12; test targets 11, 12
    split = holdout_split({"a": values}, input_size=3, horizon=2, include_validation=True)
    np.testing.assert_array_equal(split.train_y[-1], [9, 10])  # the validation targets
    assert split.train_x.shape == (6, 3) and split.val_x.shape == (0, 3)
    np.testing.assert_array_equal(split.test_y, [[11, 12]])  # the test part stays out


def test_split_carries_each_first_targets_calendar_position():
    values = np.arange(1, 9, dtype=np.float32)  # 8 values starting at position 10 of 12
    calendar = SeriesCalendar(starts={"a": 10}, period=12)
    split = holdout_split({"a": values}, input_size=4, horizon=2, min_observed=2, calendar=calendar)
    # Training window [1, 1, 1, 2] targets values 3 and 4 (index 2): position 12 % 12 = 0.
    np.testing.assert_array_equal(split.train_pos, [0])
    np.testing.assert_array_equal(split.val_pos, [(10 + 4) % 12])  # validation targets 5, 6
    np.testing.assert_array_equal(split.test_pos, [(10 + 6) % 12])  # test targets 7, 8


def test_series_calendar_reads_each_series_start(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("unique_id,ds,y\na,2000-03-01,1\na,2000-04-01,2\nb,1999-12-01,3\n")
    calendar = SeriesCalendar.of(load_long_csv(path, freq="MS"), "MS")
    assert calendar == SeriesCalendar(starts={"a": 2, "b": 11}, period=12)
