"""``fit``: data -> model(s) -> holdout metrics -> ONNX (parity-checked) -> MLflow -> bundle."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from service.bundle import Bundle, write_bundle
from service.timeindex import seasonal_period
from training import tracking
from training.data import (
    SeriesCalendar,
    Split,
    holdout_split,
    load_long_csv,
    series_values,
    summarize,
)
from training.evaluate import format_table, interval_metrics, score, seasonal_naive
from training.export import build_manifest, check_parity, export_onnx, parity_cases
from training.model import (
    Checkpoint,
    EnsembleForecaster,
    Forecaster,
    ForecasterConfig,
)
from training.plot import holdout_figure
from training.train import EpochCallback, FitResult, TrainConfig, fit, predict, refit

logger = logging.getLogger(__name__)


# Called after every epoch of every member with (member index, members, epochs a member runs
# at most, the refit's included); it may raise to stop the fit (a worker shutting down).
EpochHook = Callable[[int, int, int], None]


@dataclass
class FitOptions:
    data: Path | None  # a long-format CSV; None when run_fit is handed the frame itself
    horizon: int
    freq: str
    name: str
    out: Path
    # One model per (member config, seed); more than one are combined by their median.
    members: list[ForecasterConfig]
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=TrainConfig)
    min_observed: int | None = None  # < input_size: pad short series (see sliding_windows)
    recent_windows: int | None = None  # train on each series' latest windows only
    # After early stopping, train again through the validation window for the chosen epochs.
    refit: bool = True
    register: bool = True
    experiment: str = "forecasting"
    progress: bool = True
    data_label: str | None = None  # how the manifest names the data (default: the path)
    # Fine-tuning: start member k (in members x seeds order) from these weights.
    initial_states: list[dict[str, Any]] | None = None
    epoch_hook: EpochHook | None = None

    def runs(self) -> list[tuple[ForecasterConfig, int]]:
        """(config, seed) of every member, in the order of the ensemble and the checkpoint."""
        return list(product(self.members, self.seeds))


@dataclass
class FitReport:
    bundle: Bundle
    metrics: dict[str, dict[str, float]]
    table: str
    results: list[FitResult]


def _split(
    options: FitOptions,
    series: dict[str, np.ndarray],
    input_size: int,
    calendar: SeriesCalendar | None,
    include_validation: bool = False,
) -> Split:
    return holdout_split(
        series,
        input_size,
        options.horizon,
        options.min_observed,
        options.recent_windows,
        include_validation=include_validation,
        calendar=calendar,
    )


def train_members(
    options: FitOptions, series: dict[str, np.ndarray], calendar: SeriesCalendar | None
) -> tuple[Forecaster, list[FitResult]]:
    """Fit every (member, seed) on windows cut for its own input length; log each to MLflow."""
    results = []
    runs = options.runs()
    initial = options.initial_states or [None] * len(runs)
    if len(initial) != len(runs):
        raise ValueError(f"{len(initial)} initial states for {len(runs)} members")
    for k, ((config, seed), state) in enumerate(zip(runs, initial, strict=True)):
        prefix = f"member{k}_" if len(runs) > 1 else ""
        logger.info("member %d/%d: %s seed %d", k + 1, len(runs), config.to_dict(), seed)
        train = replace(options.train, seed=seed)
        result = fit(
            config,
            train,
            _split(options, series, config.input_size, calendar),
            on_epoch=_epoch_callback(options, prefix, k, len(runs)),
            progress=options.progress,
            initial_state=state,
        )
        if options.refit:
            result = refit(
                config,
                train,
                result,
                _split(options, series, config.input_size, calendar, include_validation=True),
                on_epoch=_epoch_callback(options, f"{prefix}refit_", k, len(runs)),
                progress=options.progress,
                initial_state=state,
            )
        mlflow.log_metrics(
            {f"{prefix}best_epoch": result.best_epoch, f"{prefix}train_seconds": result.seconds}
        )
        results.append(result)
    models = [r.model for r in results]
    model = models[0] if len(models) == 1 else EnsembleForecaster(models).eval()
    return model, results


def _epoch_callback(options: FitOptions, prefix: str, member: int, members: int) -> EpochCallback:
    log = tracking.epoch_logger(prefix)

    def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        log(epoch, train_loss, val_loss)
        if options.epoch_hook is not None:
            at_most = options.train.max_epochs * (2 if options.refit else 1)
            options.epoch_hook(member, members, at_most)

    return on_epoch


def evaluate_holdout(
    model: Forecaster, split: Split, m: int
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """The model against seasonal naive on the last horizon of every series."""
    output = predict(model, split.test_x, split.test_pos)  # (S, H, Q)
    quantiles = list(model.quantiles)
    point = quantiles.index(min(quantiles, key=lambda q: abs(q - 0.5)))
    name = "lstm_ensemble" if isinstance(model, EnsembleForecaster) else "lstm"
    forecasts = {
        name: output[:, :, point],
        "seasonal_naive": np.stack([seasonal_naive(s, model.horizon, m) for s in split.insample]),
    }
    metrics = {method: score(split.test_y, f, split.insample, m) for method, f in forecasts.items()}
    metrics[name].update(interval_metrics(split.test_y, output, quantiles, split.insample, m))
    return metrics, forecasts


def run_fit(options: FitOptions, df: pd.DataFrame | None = None) -> FitReport:
    """Train, evaluate, export (parity-checked), log to MLflow, register, write the bundle.
    ``df``: the long-format frame, sorted and regular; default: read from ``options.data``."""
    if df is None:
        if options.data is None:
            raise ValueError("run_fit needs options.data or a frame")
        df = load_long_csv(options.data, options.freq)
    series = series_values(df)
    m = seasonal_period(options.freq)
    calendar = (
        SeriesCalendar.of(df, options.freq)
        if any(c.calendar_period for c in options.members)
        else None
    )

    with tracking.start_run(options.experiment, run_name=options.name) as run:
        tracking.log_params(
            {
                "members": len(options.members) * len(options.seeds),
                "model": options.members[0].to_dict(),
                "input_sizes": sorted({c.input_size for c in options.members}),
                "seeds": options.seeds,
                "train": options.train.to_dict(),
                "freq": options.freq,
                "data": str(options.data),
                "n_series": len(series),
                "min_observed": options.min_observed,
                "recent_windows": options.recent_windows,
                "refit": options.refit,
            }
        )
        model, results = train_members(options, series, calendar)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "model.pt"
            Checkpoint.of(model).save(str(checkpoint))
            tracking.log_checkpoint(checkpoint)
            checkpoint_bytes = checkpoint.read_bytes()
        split = _split(options, series, model.input_size, calendar)
        metrics, forecasts = evaluate_holdout(model, split, m)
        mlflow.log_metrics(
            {
                f"holdout_{method}_{k}": v
                for method, vals in metrics.items()
                for k, v in vals.items()
            }
        )
        last = df.groupby("unique_id", sort=False)["ds"].max()
        table = format_table(
            metrics,
            f"Holdout: last {options.horizon} steps of {len(series)} series "
            f"(ending {last.max().date()}), seasonal period {m}",
        )
        mlflow.log_text(table + "\n", "holdout_metrics.md")
        mlflow.log_figure(_figure(df, split.ids, options.horizon, forecasts), "holdout.png")

        model_bytes = export_onnx(model)
        values = df["y"].to_numpy()
        parity = check_parity(
            model,
            model_bytes,
            parity_cases(
                np.concatenate([split.val_x, split.test_x]),
                np.concatenate([split.val_pos, split.test_pos]),
                (values.min(), values.max()),
                seed=options.train.seed,
                positive=model.positive_only,
                period=m,
            ),
        )
        mlflow.log_metrics(
            {
                "parity_max_abs_diff": parity.max_abs_diff,
                "parity_max_scaled_diff": parity.max_scaled_diff,
            }
        )

        ref = tracking.log_model(
            run,
            model_bytes,
            registered_model_name=options.name if options.register else None,
            metadata={
                "input_size": model.input_size,
                "horizon": model.horizon,
                "frequency": options.freq,
                "quantiles": list(model.quantiles),
            },
        )
        version = ref.registered_model_version or datetime.now(UTC).strftime("local-%Y%m%d%H%M%S")
        manifest = build_manifest(
            name=options.name,
            version=version,
            model=model,
            model_bytes=model_bytes,
            frequency=options.freq,
            seasonal_period=m,
            training={
                **options.train.to_dict(),
                "seeds": options.seeds,
                "min_observed": options.min_observed,
                "recent_windows": options.recent_windows,
                "refit": options.refit,
                "members": [
                    {
                        "best_epoch": r.best_epoch,
                        "epochs_run": r.epochs_run,
                        "refit_epochs": r.refit_epochs,
                        "seconds": round(r.seconds, 1),
                    }
                    for r in results
                ],
            },
            training_data=summarize(df, options.data_label or str(options.data)),
            metrics=metrics,
            parity=parity,
            mlflow_ref=ref,
            checkpoint_sha256=hashlib.sha256(checkpoint_bytes).hexdigest(),
        )
        bundle = write_bundle(options.out, model_bytes, manifest, checkpoint_bytes)
        tracking.log_bundle(bundle.path)
    logger.info("wrote bundle %s version %s to %s", options.name, version, options.out)
    return FitReport(bundle=bundle, metrics=metrics, table=table, results=results)


def _figure(
    df: pd.DataFrame, ids: list[str], horizon: int, forecasts: dict[str, np.ndarray]
) -> Figure:
    groups = {uid: g.set_index("ds")["y"] for uid, g in df.groupby("unique_id", sort=False)}
    history = [groups[uid].iloc[:-horizon] for uid in ids]
    actuals = [groups[uid].iloc[-horizon:] for uid in ids]
    return holdout_figure(ids, history, actuals, forecasts)
