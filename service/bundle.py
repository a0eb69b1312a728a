"""The model bundle: the one contract between training and serving.

A bundle is a folder holding ``model.onnx`` and ``manifest.json``, and usually
``checkpoint.pt``: the torch weights a retrain fine-tunes from (the api never reads them, and
serves bundles without one). Training writes it
(``training.export``); the service reads it (``service.inference``). Both import this module,
which needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION: Literal[1] = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"


class BundleError(Exception):
    """A bundle is missing, unreadable, or does not match its manifest."""


class TensorSpec(BaseModel):
    """One graph input or output. Symbolic dimensions are strings, e.g. ``"batch"``."""

    name: str
    shape: list[int | str]
    dtype: Literal["float32"] = "float32"


class TrainingDataSummary(BaseModel):
    source: str
    sha256: str
    n_series: int
    n_observations: int
    first_ts: str
    last_ts: str


class ParityReport(BaseModel):
    """How closely onnxruntime reproduced torch when the bundle was exported.

    ``max_abs_diff`` is in the data's units; ``max_scaled_diff`` divides each window's
    difference by max(1, the window's standard deviation), the units the gate uses.
    """

    max_abs_diff: float
    max_scaled_diff: float
    tolerance: float
    rule: str
    checks: list[str]


class MlflowRef(BaseModel):
    tracking_uri: str
    experiment_id: str
    run_id: str
    model_id: str | None = None
    registered_model_name: str | None = None
    registered_model_version: str | None = None


class BundleManifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    name: str
    version: str
    created_at: datetime
    input_size: int = Field(gt=0, description="Observations the model reads (L).")
    horizon: int = Field(gt=0, description="Steps the model emits at once (H).")
    frequency: str | None = Field(description="pandas offset alias, e.g. MS; None if any.")
    seasonal_period: int = Field(gt=0)
    quantiles: list[float] = Field(min_length=1)
    input_domain: Literal["real", "positive"] = Field(
        default="real", description="positive: the graph takes logs; values must be > 0."
    )
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    covariates: list[str] = Field(default_factory=list)
    architecture: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    training_data: TrainingDataSummary
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Holdout metrics: {method: {metric: value}}."
    )
    parity: ParityReport
    mlflow: MlflowRef | None = None
    opset: int
    onnx_sha256: str
    checkpoint_sha256: str | None = Field(
        default=None, description="sha256 of checkpoint.pt, when the bundle carries one."
    )

    @cached_property  # read for every forecast; the manifest does not change once loaded
    def point_quantile_index(self) -> int:
        """The output column served as the point forecast: the median, or the closest one."""
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: BundleManifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_path(self) -> Path | None:
        """The torch weights, verified against the manifest; None when the bundle has none."""
        path = self.path / CHECKPOINT_FILE
        expected = self.manifest.checkpoint_sha256
        if expected is None or not path.is_file():
            return None
        if sha256_file(path) != expected:
            raise BundleError(f"{path} does not match the manifest's checkpoint_sha256")
        return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and verify a bundle folder: the manifest parses and the checksum matches."""
    folder = Path(path)
    manifest_path, model_path = folder / MANIFEST_FILE, folder / MODEL_FILE
    if not manifest_path.is_file() or not model_path.is_file():
        raise BundleError(f"{folder} is not a bundle: it needs {MODEL_FILE} and {MANIFEST_FILE}")
    try:
        manifest = BundleManifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{manifest_path} is not a valid manifest: {exc}") from exc
    actual = sha256_file(model_path)
    if actual != manifest.onnx_sha256:
        raise BundleError(
            f"{model_path} has sha256 {actual}, but the manifest records {manifest.onnx_sha256}"
        )
    return Bundle(path=folder, manifest=manifest)


def write_bundle(
    path: str | os.PathLike[str],
    model_bytes: bytes,
    manifest: BundleManifest,
    checkpoint: bytes | None = None,
) -> Bundle:
    """Write a bundle so that readers never see half of one.

    The files go to a temporary sibling folder that then replaces ``path``; the old bundle,
    if any, is removed only after the new one is in place.
    """
    target = Path(path)
    if hashlib.sha256(model_bytes).hexdigest() != manifest.onnx_sha256:
        raise BundleError("the manifest's onnx_sha256 does not match the model bytes")
    if checkpoint is not None and hashlib.sha256(checkpoint).hexdigest() != (
        manifest.checkpoint_sha256
    ):
        raise BundleError("the manifest's checkpoint_sha256 does not match the checkpoint")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is read by other users too
    (staging / MODEL_FILE).write_bytes(model_bytes)
    if checkpoint is not None:
        (staging / CHECKPOINT_FILE).write_bytes(checkpoint)
    (staging / MANIFEST_FILE).write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
    )
    retired = None
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(retired)
    staging.rename(target)
    if retired is not None:
        shutil.rmtree(retired)
    return read_bundle(target)
