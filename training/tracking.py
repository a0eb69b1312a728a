"""MLflow: where runs go, and how a trained bundle is logged and registered.

Default store: a SQLite file and an artifact folder under ``var/`` (no server to run).
``MLFLOW_TRACKING_URI`` points elsewhere, e.g. the compose stack's tracking server.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import onnx
from mlflow.entities import Run

from service.bundle import MODEL_FILE, MlflowRef

logger = logging.getLogger(__name__)

DEFAULT_STORE_DIR = Path("var")
DEFAULT_TRACKING_URI = f"sqlite:///{DEFAULT_STORE_DIR}/mlflow.db"
CHECKPOINT_ARTIFACT = "checkpoint"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _experiment_id(name: str, uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    # With the embedded store, keep artifacts beside the database rather than in ./mlruns.
    location = None
    if uri == DEFAULT_TRACKING_URI:
        location = (DEFAULT_STORE_DIR / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


@contextmanager
def start_run(experiment: str, run_name: str) -> Iterator[Run]:
    uri = tracking_uri()
    if uri == DEFAULT_TRACKING_URI:
        DEFAULT_STORE_DIR.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=_experiment_id(experiment, uri), run_name=run_name) as run:
        yield run


def log_params(params: dict[str, Any]) -> None:
    # MLflow params are flat strings; nested configs become "section.key".
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    mlflow.log_params({k: str(v) for k, v in flat.items()})


def epoch_logger(prefix: str = "") -> Callable[[int, float, float], None]:
    """A training callback that logs each epoch's losses (``prefix`` tells members apart)."""

    def log_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        metrics = {f"{prefix}train_loss": train_loss}
        if math.isfinite(val_loss):  # a refit has no validation window
            metrics[f"{prefix}val_loss"] = val_loss
        mlflow.log_metrics(metrics, step=epoch)

    return log_epoch


def log_checkpoint(checkpoint_path: Path) -> None:
    """The torch checkpoint, in the run: a later finetune starts from the registered version's
    weights, and a refused export loses no training."""
    mlflow.log_artifact(str(checkpoint_path), artifact_path=CHECKPOINT_ARTIFACT)


def log_bundle(bundle_dir: Path) -> None:
    """The served bundle (graph, manifest, checkpoint) as the run's ``bundle/`` artifacts: the
    api downloads a registered version's bundle from there, and a retrain fine-tunes from its
    checkpoint."""
    mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")


def log_model(
    run: Run,
    model_bytes: bytes,
    registered_model_name: str | None,
    metadata: dict[str, Any],
) -> MlflowRef:
    """Log the ONNX graph as an MLflow model (registering a version if a name is given)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        path.write_bytes(model_bytes)
        info = mlflow.onnx.log_model(
            onnx.load_model(str(path)),
            name="model",
            registered_model_name=registered_model_name,
            # One self-contained file, and CPU unless the loader says otherwise.
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata=metadata,
        )
    version = info.registered_model_version
    return MlflowRef(
        tracking_uri=tracking_uri(),
        experiment_id=run.info.experiment_id,
        run_id=run.info.run_id,
        model_id=info.model_id,
        registered_model_name=registered_model_name,
        registered_model_version=None if version is None else str(version),
    )
