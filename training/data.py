"""Series in the long format (``unique_id, ds, y``) and the windows cut from them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from service.bundle import TrainingDataSummary
from service.timeindex import parse_frequency, season_position, seasonal_period

LONG_COLUMNS = ("unique_id", "ds", "y")


class DataError(ValueError):
    """The input data can't be used as given; the message says which rows and why."""


def load_long_csv(path: str | Path, freq: str | None = None) -> pd.DataFrame:
    """Read a long-format CSV, check it, and return it sorted by (unique_id, ds)."""
    return prepare_long(pd.read_csv(path), freq, str(path))


def prepare_long(df: pd.DataFrame, freq: str | None = None, source: str = "data") -> pd.DataFrame:
    """Check a long-format frame and return it sorted by (unique_id, ds); errors name ``source``
    and the offending rows.

    Each series must be regular at ``freq`` (when given) with no gaps: the windows assume one
    row per period.
    """
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; expected {list(LONG_COLUMNS)}")
    df = df[list(LONG_COLUMNS)].copy()
    df["unique_id"] = df["unique_id"].astype(str)
    df["ds"] = pd.to_datetime(df["ds"], errors="coerce")
    df["y"] = pd.to_numeric(df["y"], errors="coerce").astype("float64")
    bad = df.index[df["ds"].isna() | ~np.isfinite(df["y"])]
    if len(bad):
        raise DataError(
            f"{source}: rows {[int(i) + 2 for i in bad[:5]]} have no valid ds or finite y"
        )
    dupes = df.duplicated(["unique_id", "ds"])
    if dupes.any():
        raise DataError(
            f"{source}: duplicate (unique_id, ds) at rows "
            f"{[int(i) + 2 for i in df.index[dupes][:5]]}"
        )
    df = df.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
    if freq is not None:
        _check_regular(df, freq)
    return df


def _check_regular(df: pd.DataFrame, freq: str) -> None:
    offset = parse_frequency(freq)
    for uid, group in df.groupby("unique_id", sort=False):
        expected = pd.date_range(group["ds"].iloc[0], periods=len(group), freq=offset)
        if not expected.equals(pd.DatetimeIndex(group["ds"])):
            first = int(np.flatnonzero(expected != pd.DatetimeIndex(group["ds"]))[0])
            raise DataError(
                f"series {uid!r} is not regular at {freq}: expected {expected[first].date()} "
                f"at position {first}, found {group['ds'].iloc[first].date()}"
            )


def series_values(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """unique_id -> values (oldest first) as float32."""
    return {str(uid): g["y"].to_numpy(np.float32) for uid, g in df.groupby("unique_id", sort=False)}


def summarize(df: pd.DataFrame, source: str | Path) -> TrainingDataSummary:
    content = df.to_csv(index=False).encode()
    return TrainingDataSummary(
        source=str(source),
        sha256=hashlib.sha256(content).hexdigest(),
        n_series=int(df["unique_id"].nunique()),
        n_observations=len(df),
        first_ts=df["ds"].min().isoformat(),
        last_ts=df["ds"].max().isoformat(),
    )


def left_pad(values: np.ndarray, length: int) -> np.ndarray:
    """Repeat the first value in front until ``values`` is ``length`` long (if it is shorter)."""
    missing = length - len(values)
    if missing <= 0:
        return values
    return np.concatenate([np.full(missing, values[0], values.dtype), values])


def sliding_windows(
    values: np.ndarray, input_size: int, horizon: int, min_observed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every (input, target) pair in one series: inputs (N, L), targets (N, H).

    Window i reads values[i : i+L] and targets the next H. With ``min_observed`` < L, windows
    may also start before the series does: their inputs are left-padded with the first value
    and hold at least ``min_observed`` real ones. That is how a global model learns from
    series shorter than L + H (most of M3's are), as N-BEATS does.
    """
    if min_observed is not None and min_observed < input_size:
        values = left_pad(values, len(values) + input_size - min_observed)
    n = len(values) - input_size - horizon + 1
    if n <= 0:
        empty = np.empty((0, input_size), np.float32), np.empty((0, horizon), np.float32)
        return empty
    span = np.lib.stride_tricks.sliding_window_view(values, input_size + horizon)[:n]  # (N, L+H)
    return span[:, :input_size].astype(np.float32), span[:, input_size:].astype(np.float32)


@dataclass(frozen=True)
class SeriesCalendar:
    """Where each series starts within the calendar period (``service.timeindex``'s
    season_position of its first timestamp), for models with a calendar covariate."""

    starts: dict[str, int]
    period: int

    @classmethod
    def of(cls, df: pd.DataFrame, freq: str) -> SeriesCalendar:
        first = df.groupby("unique_id", sort=False)["ds"].min()
        starts = {str(uid): season_position(ts.to_pydatetime(), freq) for uid, ts in first.items()}
        return cls(starts=starts, period=seasonal_period(freq))

    def positions(self, series_id: str, index: np.ndarray) -> np.ndarray:
        """Calendar positions of the values at ``index`` (0 = the series' first value)."""
        return ((self.starts[series_id] + index) % self.period).astype(np.float32)


@dataclass(frozen=True)
class Split:
    """Windows for training, early stopping and the final holdout, across all series.

    Per series the last ``horizon`` values are the holdout (test), the ``horizon`` before them
    are the validation targets, and training windows target only what comes earlier. Each
    window comes with the calendar position of its first target (all 0 without a calendar).
    """

    train_x: np.ndarray  # (N, L)
    train_y: np.ndarray  # (N, H)
    train_pos: np.ndarray  # (N,)
    val_x: np.ndarray  # (S, L): one window per series
    val_y: np.ndarray  # (S, H)
    val_pos: np.ndarray  # (S,)
    test_x: np.ndarray  # (S, L)
    test_y: np.ndarray  # (S, H)
    test_pos: np.ndarray  # (S,)
    ids: list[str]
    insample: list[np.ndarray]  # per series: everything before the holdout (for MASE, naive)


def holdout_split(
    series: dict[str, np.ndarray],
    input_size: int,
    horizon: int,
    min_observed: int | None = None,
    recent_windows: int | None = None,
    include_validation: bool = False,
    calendar: SeriesCalendar | None = None,
) -> Split:
    """``min_observed`` < input_size admits series shorter than input_size + 3 * horizon; their
    windows are left-padded (see sliding_windows). ``recent_windows`` keeps only each series'
    latest training windows: every series then weighs about the same, and recent behaviour
    counts most (N-BEATS's history limit on M3 and M4).

    ``include_validation``: the training windows also target the validation window (they
    reach up to the test part), and the split has no validation windows. This is the refit
    after early stopping has chosen the number of epochs: the latest values, the most
    informative ones, are then learned from too."""
    observed = input_size if min_observed is None else min(min_observed, input_size)
    # Unpadded: every series needs a full training window, plus validation and test. Padded: a
    # series needs only one real value before its validation and test targets; one too short
    # for any training window still counts in validation and test.
    need = observed + 3 * horizon if min_observed is None else 2 * horizon + 1
    short = [uid for uid, v in series.items() if len(v) < need]
    if short:
        raise DataError(
            f"{len(short)} series have fewer than {need} values "
            f"(e.g. {short[:3]}); use a smaller --input-size or drop them"
        )
    calendar = calendar or SeriesCalendar({uid: 0 for uid in series}, 1)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Split.__dataclass_fields__}
    for uid, values in series.items():
        before_test = values[:-horizon]
        before_val = before_test[:-horizon]
        trained = before_test if include_validation else before_val
        x, y = sliding_windows(trained, input_size, horizon, observed)
        # Window i's first target is value i + L - padding of the series.
        first_target = np.arange(len(x)) + observed
        if recent_windows is not None:
            x, y, first_target = (
                x[-recent_windows:],
                y[-recent_windows:],
                first_target[-recent_windows:],
            )
        parts["train_x"].append(x)
        parts["train_y"].append(y)
        parts["train_pos"].append(calendar.positions(uid, first_target))
        if not include_validation:
            parts["val_x"].append(left_pad(before_val, input_size)[None, -input_size:])
            parts["val_y"].append(before_test[None, -horizon:])
            parts["val_pos"].append(calendar.positions(uid, np.array([len(before_val)])))
        parts["test_x"].append(left_pad(before_test, input_size)[None, -input_size:])
        parts["test_y"].append(values[None, -horizon:])
        parts["test_pos"].append(calendar.positions(uid, np.array([len(before_test)])))
    empty = {
        "val_x": np.empty((0, input_size), np.float32),
        "val_y": np.empty((0, horizon), np.float32),
        "val_pos": np.empty(0, np.float32),
    }
    arrays = {
        k: np.concatenate(v) if v else empty[k]
        for k, v in parts.items()
        if k not in ("ids", "insample")
    }
    return Split(
        **arrays,
        ids=list(series),
        insample=[values[:-horizon] for values in series.values()],
    )
