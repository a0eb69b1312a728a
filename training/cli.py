"""``python -m training fit --data data/air_passengers.csv --horizon 12``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from service.bundle import BundleError
from service.errors import ServiceError
from service.timeindex import calendar_covariate, seasonal_period
from training import jobs_cli
from training.data import DataError, load_long_csv
from training.export import ParityError
from training.model import ForecasterConfig
from training.pipeline import FitOptions, run_fit
from training.train import TrainConfig

DEFAULT_MODEL = ForecasterConfig(input_size=24, horizon=1, quantiles=(0.1, 0.5, 0.9))
DEFAULT_TRAIN = TrainConfig()


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _quantiles(text: str) -> tuple[float, ...]:
    values = tuple(sorted(float(v) for v in text.split(",")))
    if not values or not all(0 < q < 1 for q in values):
        raise argparse.ArgumentTypeError(f"quantiles must lie strictly between 0 and 1: {text}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="train, evaluate, export and register a model bundle")
    fit.add_argument("--data", type=Path, required=True, help="long-format CSV: unique_id,ds,y")
    fit.add_argument("--horizon", type=int, required=True, help="steps to forecast (H)")
    fit.add_argument("--freq", help="pandas offset alias (MS, QS, D...); inferred if omitted")
    fit.add_argument("--name", help="model name (default: the data file's stem)")
    fit.add_argument("--out", type=Path, help="bundle folder (default: models/<name>)")
    fit.add_argument(
        "--input-size",
        type=_ints,
        default=[DEFAULT_MODEL.input_size],
        help="window L; several (e.g. 24,36) train one ensemble member each",
    )
    fit.add_argument("--cell", choices=["lstm", "gru"], default=DEFAULT_MODEL.cell)
    fit.add_argument("--hidden-size", type=int, default=DEFAULT_MODEL.hidden_size)
    fit.add_argument("--num-layers", type=int, default=DEFAULT_MODEL.num_layers)
    fit.add_argument("--dropout", type=float, default=DEFAULT_MODEL.dropout)
    fit.add_argument("--bidirectional", action="store_true", help="read windows both ways")
    fit.add_argument("--conv-channels", type=int, default=0, help="> 0: a causal Conv1d front-end")
    fit.add_argument("--head", choices=["linear", "attention"], default=DEFAULT_MODEL.head)
    fit.add_argument(
        "--quantiles",
        type=_quantiles,
        default=DEFAULT_MODEL.quantiles,
        help="comma-separated quantiles trained with pinball loss (default 0.1,0.5,0.9)",
    )
    fit.add_argument("--transform", choices=["none", "log"], default=DEFAULT_MODEL.transform)
    fit.add_argument(
        "--season-length",
        type=int,
        default=1,
        help="> 1: remove each window's seasonal profile of this period inside the model "
        "(every input size must be a multiple)",
    )
    fit.add_argument(
        "--season-gate",
        action="store_true",
        help="with --season-length: learn per window how much of the removed profile returns "
        "to the forecast (a noisy window's profile is mostly noise)",
    )
    fit.add_argument(
        "--calendar",
        action="store_true",
        help="read the calendar: each step's position in the seasonal period of --freq "
        "(month of year for MS, quarter for QS...); the service computes it from timestamps",
    )
    fit.add_argument("--max-epochs", type=int, default=DEFAULT_TRAIN.max_epochs)
    fit.add_argument("--batch-size", type=int, default=DEFAULT_TRAIN.batch_size)
    fit.add_argument("--learning-rate", type=float, default=DEFAULT_TRAIN.learning_rate)
    fit.add_argument("--patience", type=int, default=DEFAULT_TRAIN.patience)
    fit.add_argument(
        "--seed", type=_ints, default=[DEFAULT_TRAIN.seed], help="several (e.g. 0,1,2): an ensemble"
    )
    fit.add_argument(
        "--min-observed",
        type=int,
        help="train on windows left-padded down to this many real values (short series)",
    )
    fit.add_argument(
        "--recent-windows", type=int, help="train on each series' latest N windows only"
    )
    fit.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the early-stopped weights; by default the model trains again, for the "
        "chosen epochs, on windows that reach through the validation window",
    )
    fit.add_argument("--experiment", default="forecasting", help="MLflow experiment name")
    fit.add_argument("--no-register", action="store_true", help="log the run, skip the registry")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    forecast = commands.add_parser(
        "forecast", help="forecast the next steps of every series in a CSV with a bundle"
    )
    forecast.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    forecast.add_argument("--data", type=Path, required=True, help="long-format CSV")
    forecast.add_argument("--out", type=Path, required=True, help="CSV to write")
    forecast.add_argument("--horizon", type=int, help="steps (default: the model's horizon)")
    jobs_cli.add_commands(commands)
    return parser


def _forecast(args: argparse.Namespace) -> int:
    from training.batch import forecast_frame

    frame = forecast_frame(args.bundle, args.data, args.horizon)
    frame.to_csv(args.out, index=False)
    methods = frame.drop_duplicates("unique_id")["method"].value_counts().to_dict()
    print(
        f"wrote {len(frame)} rows for {frame['unique_id'].nunique()} series to {args.out} {methods}"
    )
    return 0


def _infer_freq(path: Path) -> str:
    df = load_long_csv(path)
    first = df[df["unique_id"] == df["unique_id"].iloc[0]]
    freq = pd.infer_freq(pd.DatetimeIndex(first["ds"])) if len(first) >= 3 else None
    if freq is None:
        raise DataError(f"{path}: can't infer the frequency; pass --freq (e.g. MS, QS, D)")
    return freq


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Our own progress at INFO; the libraries (exporter passes, MLflow's store) only warnings.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("training").setLevel(logging.INFO)
    try:
        if args.command == "forecast":
            return _forecast(args)
        if args.command == "worker":
            return jobs_cli.run_worker(args)
        if args.command == "retrain":
            return jobs_cli.run_retrain(args)
        freq = args.freq or _infer_freq(args.data)
        if args.calendar and calendar_covariate(freq) is None:
            raise ValueError(
                f"--calendar: frequency {freq!r} has no calendar covariate (it needs a seasonal "
                "period that every step advances by one: MS, QS, D, B, h...)"
            )
        name = args.name or args.data.stem
        options = FitOptions(
            data=args.data,
            horizon=args.horizon,
            freq=freq,
            name=name,
            out=args.out or Path("models") / name,
            members=[
                ForecasterConfig(
                    input_size=input_size,
                    horizon=args.horizon,
                    cell=args.cell,
                    hidden_size=args.hidden_size,
                    num_layers=args.num_layers,
                    dropout=args.dropout,
                    bidirectional=args.bidirectional,
                    conv_channels=args.conv_channels,
                    head=args.head,
                    quantiles=args.quantiles,
                    transform=args.transform,
                    season_length=args.season_length,
                    season_gate=args.season_gate,
                    calendar_period=seasonal_period(freq) if args.calendar else 0,
                )
                for input_size in args.input_size
            ],
            seeds=args.seed,
            train=TrainConfig(
                max_epochs=args.max_epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                patience=args.patience,
                seed=args.seed[0],
            ),
            min_observed=args.min_observed,
            recent_windows=args.recent_windows,
            refit=not args.no_refit,
            register=not args.no_register,
            experiment=args.experiment,
            progress=not args.no_progress,
        )
        report = run_fit(options)
    except (DataError, ParityError, ServiceError, BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = report.bundle.manifest
    print(report.table)
    print(
        f"\nbundle {m.name} version {m.version} -> {report.bundle.path} "
        f"(parity: max abs diff {m.parity.max_abs_diff:.2e}, "
        f"{m.parity.max_scaled_diff:.2e} in window-std units; "
        f"{len(report.results)} member(s), best epochs "
        f"{[r.best_epoch for r in report.results]})"
    )
    if m.mlflow is not None:
        print(f"mlflow: {m.mlflow.tracking_uri} run {m.mlflow.run_id}")
    return 0
