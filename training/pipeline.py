"""``fit``: data -> model -> holdout metrics -> ONNX (parity-checked) -> MLflow -> bundle."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from service.bundle import Bundle, write_bundle
from service.timeindex import seasonal_period
from training import tracking
from training.data import holdout_split, load_long_csv, series_values, summarize
from training.evaluate import format_table, score, seasonal_naive
from training.export import build_manifest, check_parity, export_onnx, parity_cases
from training.model import Checkpoint, ForecasterConfig
from training.plot import holdout_figure
from training.train import FitResult, TrainConfig, fit, predict

logger = logging.getLogger(__name__)


@dataclass
class FitOptions:
    data: Path
    horizon: int
    freq: str
    name: str
    out: Path
    model: ForecasterConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    register: bool = True
    experiment: str = "forecasting"
    progress: bool = True


@dataclass
class FitReport:
    bundle: Bundle
    metrics: dict[str, dict[str, float]]
    table: str
    result: FitResult


def run_fit(options: FitOptions) -> FitReport:
    config = options.model
    df = load_long_csv(options.data, options.freq)
    series = series_values(df)
    m = seasonal_period(options.freq)
    split = holdout_split(series, config.input_size, config.horizon)

    with tracking.start_run(options.experiment, run_name=options.name) as run:
        tracking.log_params(
            {
                "model": config.to_dict(),
                "train": options.train.to_dict(),
                "freq": options.freq,
                "data": str(options.data),
                "n_series": len(series),
            }
        )
        result = fit(
            config, options.train, split, on_epoch=tracking.log_epoch, progress=options.progress
        )
        mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds})

        point = config.quantiles.index(min(config.quantiles, key=lambda q: abs(q - 0.5)))
        forecasts = {
            "lstm": predict(result.model, split.test_x)[:, :, point],  # (S, H)
            "seasonal_naive": np.stack(
                [seasonal_naive(s, config.horizon, m) for s in split.insample]
            ),
        }
        metrics = {
            method: score(split.test_y, f, split.insample, m) for method, f in forecasts.items()
        }
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
            f"Holdout: last {config.horizon} steps of {len(series)} series "
            f"(ending {last.max().date()}), seasonal period {m}",
        )
        mlflow.log_text(table + "\n", "holdout_metrics.md")
        mlflow.log_figure(_figure(df, split.ids, config.horizon, forecasts), "holdout.png")

        model_bytes = export_onnx(result.model)
        values = df["y"].to_numpy()
        parity = check_parity(
            result.model,
            model_bytes,
            parity_cases(
                np.concatenate([split.val_x, split.test_x]),
                values.min(),
                values.max(),
                seed=options.train.seed,
            ),
        )
        mlflow.log_metrics(
            {
                "parity_max_abs_diff": parity.max_abs_diff,
                "parity_max_scaled_diff": parity.max_scaled_diff,
            }
        )

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "model.pt"
            Checkpoint(config=config, state_dict=result.model.state_dict()).save(str(checkpoint))
            ref = tracking.log_model(
                run,
                model_bytes,
                checkpoint,
                registered_model_name=options.name if options.register else None,
                metadata={
                    "input_size": config.input_size,
                    "horizon": config.horizon,
                    "frequency": options.freq,
                    "quantiles": list(config.quantiles),
                },
            )
        version = ref.registered_model_version or datetime.now(UTC).strftime("local-%Y%m%d%H%M%S")
        manifest = build_manifest(
            name=options.name,
            version=version,
            model=result.model,
            model_bytes=model_bytes,
            frequency=options.freq,
            seasonal_period=m,
            training={
                **options.train.to_dict(),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "seconds": round(result.seconds, 2),
            },
            training_data=summarize(df, options.data),
            metrics=metrics,
            parity=parity,
            mlflow_ref=ref,
        )
        bundle = write_bundle(options.out, model_bytes, manifest)
        mlflow.log_dict(manifest.model_dump(mode="json"), "bundle/manifest.json")
    logger.info("wrote bundle %s version %s to %s", options.name, version, options.out)
    return FitReport(bundle=bundle, metrics=metrics, table=table, result=result)


def _figure(df: pd.DataFrame, ids: list[str], horizon: int, forecasts: dict[str, np.ndarray]):
    groups = {uid: g.set_index("ds")["y"] for uid, g in df.groupby("unique_id", sort=False)}
    history = [groups[uid].iloc[:-horizon] for uid in ids]
    actuals = [groups[uid].iloc[-horizon:] for uid in ids]
    return holdout_figure(ids, history, actuals, forecasts)
