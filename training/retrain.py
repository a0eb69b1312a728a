"""One retrain job, start to finish.

The champion (the registry's ``champion`` alias, else the bundle under models/) says how to
train: its architecture, its training settings and, for ``finetune``, its weights. The data
are the series stored in the service's database. The candidate goes through the same pipeline
as ``python -m training fit`` (logged to MLflow, exported, parity-checked, registered). Then
candidate and champion forecast the same latest window of every series through onnxruntime,
as the api would serve them, and the policy decides whether the alias moves.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.bundle import Bundle, BundleError, read_bundle
from service.config import Settings
from service.db import repository
from service.db.session import build_engine, build_sessionmaker
from service.inference import Forecaster, load_forecaster
from service.registry import CHAMPION, RegistryWatcher, check_compatible, registry_source
from service.timeindex import parse_frequency, same_frequency
from training.data import DataError, SeriesCalendar, holdout_split, prepare_long, series_values
from training.evaluate import score
from training.model import Checkpoint, ForecasterConfig
from training.pipeline import EpochHook, FitOptions, run_fit
from training.train import TrainConfig

logger = logging.getLogger(__name__)

DECISION_METRIC = "mase"  # scale-free, and defined for series near zero (unlike sMAPE)
OVERRIDABLE = ("max_epochs", "learning_rate", "patience", "batch_size")


class RetrainError(RuntimeError):
    """The job can't be done as asked; the message says why (it becomes the job's error)."""


@dataclass(frozen=True)
class Champion:
    bundle: Bundle
    source: str


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | rejected
    result: dict[str, Any]
    model_version: str


def find_champion(name: str, settings: Settings, registry: RegistryWatcher) -> Champion:
    """The version the registry's alias names, else the bundle folder of that name."""
    version = registry.champion(name)
    if version is not None:
        folder = registry.download(name, version)
        return Champion(read_bundle(folder), registry_source(name, str(version.version)))
    folder = settings.models_dir / name
    try:
        return Champion(read_bundle(folder), f"folder:{folder}")
    except BundleError as exc:
        raise RetrainError(f"no champion for model {name!r}: {exc}") from exc


def load_frame(
    settings: Settings, frequency: str, series_ids: list[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """The stored series to train on, in the long format, and the ids left out because they
    have gaps (the windows assume one value per period; a gap would shift them)."""
    engine = build_engine(settings.database_url)
    try:
        with build_sessionmaker(engine)() as session:
            rows = repository.series_for_training(
                session, frequency=frequency, series_ids=series_ids
            )
    finally:
        engine.dispose()
    frame = pd.DataFrame(rows, columns=["unique_id", "frequency", "ds", "y"])
    if series_ids is not None:
        missing = sorted(set(series_ids) - set(frame["unique_id"]))
        if missing:
            raise RetrainError(f"stored series without observations (or unknown): {missing[:5]}")
        other = sorted(
            {u for u, f in zip(frame["unique_id"], frame["frequency"], strict=True)
             if not same_frequency(f, frequency)}
        )  # fmt: skip
        if other:
            raise RetrainError(f"series {other[:5]} are not of the model's frequency {frequency}")
    if frame.empty:
        raise RetrainError(f"no stored series of frequency {frequency} to train on")
    frame = prepare_long(frame.drop(columns="frequency"), None, "stored series")
    offset = parse_frequency(frequency)
    gappy = [
        str(uid)
        for uid, ds in frame.groupby("unique_id", sort=False)["ds"]
        if not pd.DatetimeIndex(ds).equals(pd.date_range(ds.iloc[0], periods=len(ds), freq=offset))
    ]
    if gappy:
        logger.warning("left out %d series with gaps, e.g. %s", len(gappy), gappy[:5])
    return frame[~frame["unique_id"].isin(gappy)].reset_index(drop=True), gappy


def training_plan(
    champion: Champion, params: dict[str, Any]
) -> tuple[list[ForecasterConfig], list[int], TrainConfig, dict[str, Any]]:
    """Member configs, seeds and training settings: the champion's, with the overrides."""
    m = champion.bundle.manifest
    architecture = m.architecture
    configs = [ForecasterConfig.from_dict(c) for c in architecture.get("members", [architecture])]
    training = dict(m.training)
    seeds = list(training.get("seeds", [training.get("seed", 0)]))
    members: list[ForecasterConfig] = []
    for config in configs:  # the checkpoint holds members x seeds; the plan holds members
        if config not in members:
            members.append(config)
    if len(members) * len(seeds) != len(configs):
        members, seeds = configs, [int(training.get("seed", 0))]
    overrides = params.get("overrides") or {}
    settings = {k: v for k, v in training.items() if k in TrainConfig.__dataclass_fields__}
    settings.update({k: v for k, v in overrides.items() if k in OVERRIDABLE})
    train = TrainConfig(**settings)
    extra = {
        "min_observed": training.get("min_observed"),
        "recent_windows": overrides.get("recent_windows", training.get("recent_windows")),
        "refit": bool(training.get("refit", False)),
    }
    return members, seeds, train, extra


def initial_states(champion: Champion, runs: list[tuple[ForecasterConfig, int]]) -> list[Any]:
    """The champion's weights for each member, in order (fine-tuning)."""
    path = champion.bundle.checkpoint_path
    if path is None:
        raise RetrainError(
            f"mode finetune needs the champion's torch weights, and {champion.source} has no "
            "checkpoint.pt; retrain with mode scratch"
        )
    checkpoint = Checkpoint.load(str(path))
    if checkpoint.configs != [config for config, _ in runs]:
        raise RetrainError(f"the checkpoint of {champion.source} does not match its manifest")
    return list(checkpoint.state_dicts)


def backtest(
    forecaster: Forecaster, frame: pd.DataFrame, min_observed: int | None
) -> dict[str, float]:
    """Metrics of a served model on the last horizon of every series, from what precedes it."""
    m = forecaster.manifest
    assert m.frequency is not None
    calendar = SeriesCalendar.of(frame, m.frequency) if m.covariates else None
    split = holdout_split(
        series_values(frame), m.input_size, m.horizon, min_observed, calendar=calendar
    )
    output = forecaster.predict(split.test_x, split.test_pos)[:, :, m.point_quantile_index]
    return score(split.test_y, output, split.insample, m.seasonal_period)


def decide(
    promote: str, candidate: dict[str, float], champion: dict[str, float] | None
) -> tuple[bool, str, str]:
    """(promote?, decision, reason) under the job's policy."""
    metric = DECISION_METRIC
    ours = candidate[metric]
    theirs = champion[metric] if champion else float("nan")
    scores = f"candidate {metric.upper()} {ours:.4f}, champion {theirs:.4f}"
    if promote == "never":
        return False, "not_promoted", f"promote=never ({scores})"
    if promote == "always":
        return True, "promoted", f"promote=always ({scores})"
    if math.isnan(theirs):
        return False, "kept_champion", f"the champion could not be backtested ({scores})"
    if ours < theirs:
        return True, "promoted", f"{scores}: the candidate is better"
    return False, "kept_champion", f"{scores}: the candidate is not better; the champion stays"


def usable_series(
    frame: pd.DataFrame, champion: Champion, min_observed: int | None
) -> pd.DataFrame:
    """The frame without series too short for a training, validation and backtest window."""
    m = champion.bundle.manifest
    need = 2 * m.horizon + 1 if min_observed is not None else m.input_size + 3 * m.horizon
    lengths = frame.groupby("unique_id")["y"].transform("size")
    usable = frame[lengths >= need]
    if usable.empty:
        raise RetrainError(
            f"no stored series has the {need} values a retrain of {m.name!r} needs "
            f"(training, validation and backtest windows of {m.horizon})"
        )
    return usable.reset_index(drop=True)


def run_job(
    model_name: str,
    params: dict[str, Any],
    settings: Settings,
    epoch_hook: EpochHook,
    still_ours: Callable[[], bool] = lambda: True,
) -> Outcome:
    """``still_ours`` is asked just before the alias moves: a worker whose lease has lapsed
    (another worker may be running the job again) must not promote."""
    registry = RegistryWatcher(settings)
    champion = find_champion(model_name, settings, registry)
    manifest = champion.bundle.manifest
    if manifest.frequency is None:
        raise RetrainError(f"{champion.source} declares no frequency to select series by")
    members, seeds, train, extra = training_plan(champion, params)
    stored, gappy = load_frame(settings, manifest.frequency, params.get("series"))
    frame = usable_series(stored, champion, extra["min_observed"])
    serving = load_forecaster(str(champion.bundle.path), "cpu", 1)
    with tempfile.TemporaryDirectory() as tmp:
        options = FitOptions(
            data=None,
            horizon=manifest.horizon,
            freq=manifest.frequency,
            name=model_name,
            out=Path(tmp) / "bundle",
            members=members,
            seeds=seeds,
            train=train,
            min_observed=extra["min_observed"],
            recent_windows=extra["recent_windows"],
            refit=extra["refit"],
            experiment=f"retrain-{model_name}",
            progress=False,
            data_label=f"service database: {frame['unique_id'].nunique()} stored series "
            f"of frequency {manifest.frequency}",
            epoch_hook=epoch_hook,
        )
        if params.get("mode", "finetune") == "finetune":
            options.initial_states = initial_states(champion, options.runs())
        report = run_fit(options, frame)
        # Refused here rather than by every api: a registered version the api can't serve.
        candidate_model = load_forecaster(str(report.bundle.path), "cpu", 1)
        check_compatible(serving, candidate_model)
        candidate = backtest(candidate_model, frame, extra["min_observed"])
    try:
        champion_metrics = backtest(serving, frame, extra["min_observed"])
    except (DataError, ValueError) as exc:  # e.g. a log model meeting a non-positive value
        logger.warning("could not backtest the champion %s: %s", champion.source, exc)
        champion_metrics = None
    version = report.bundle.manifest.version
    policy = params.get("promote", "if_better")
    promote, decision, reason = decide(policy, candidate, champion_metrics)
    if promote:
        if not still_ours():
            raise RetrainError("the job's lease was lost before promotion; nothing promoted")
        registry.client().set_registered_model_alias(model_name, CHAMPION, version)
        logger.info("model %s: alias %s -> version %s (%s)", model_name, CHAMPION, version, reason)
    mlflow_ref = report.bundle.manifest.mlflow
    result = {
        "candidate": {**_finite(candidate), "version": version},
        "champion": None
        if champion_metrics is None
        else {**_finite(champion_metrics), "version": manifest.version, "source": champion.source},
        "decision": decision,
        "reason": reason,
        "series": int(frame["unique_id"].nunique()),
        "series_left_out": {
            "gaps": gappy[:100],
            "too_short": int(stored["unique_id"].nunique() - frame["unique_id"].nunique()),
        },
        "backtest": f"the last {manifest.horizon} steps of every series",
        "mlflow_run_id": mlflow_ref.run_id if mlflow_ref else None,
    }
    return Outcome("rejected" if decision == "kept_champion" else "succeeded", result, version)


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a metric that is undefined (e.g. MAPE on zeros) becomes null."""
    return {k: (v if np.isfinite(v) else None) for k, v in metrics.items()}
