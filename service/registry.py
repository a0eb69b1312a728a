"""Hot swap: follow each served model's ``champion`` alias in the MLflow registry.

Every registered version keeps its bundle (``model.onnx``, ``manifest.json`` and the torch
checkpoint) as the ``bundle/`` artifacts of the run that produced it. When a model's alias
points at a version the api doesn't serve yet, the bundle is downloaded, verified (checksum,
manifest against graph, a warm-up inference) and checked against the model it replaces; only
then does a new model set replace the old one, in one assignment. Requests in flight keep the
set they started with. A bundle that fails is refused and logged, and the old one keeps
serving. Rolling back is moving the alias back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.bundle import BundleError
from service.config import Settings
from service.inference import Forecaster, load_forecaster
from service.model_set import ModelSet

logger = logging.getLogger(__name__)

CHAMPION = "champion"
BUNDLE_ARTIFACT = "bundle"


def registry_source(name: str, version: str) -> str:
    return f"registry:models:/{name}/{version}"


@dataclass
class RegistryWatcher:
    settings: Settings
    # Sources already refused: they are not downloaded again on every poll.
    refused: dict[str, str] = field(default_factory=dict)
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient  # the api needs mlflow only when it follows aliases

            self._client = MlflowClient(self.settings.mlflow_tracking_uri)
        return self._client

    def champion(self, name: str) -> Any | None:
        """The version the alias points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def check(self, models: ModelSet) -> ModelSet | None:
        """A new model set when some champion moved to a bundle that passed every check,
        else None. Never raises for one bad bundle: it is refused and logged."""
        served = dict(models.models)
        refused = dict(models.refused)
        for name, current in models.models.items():
            version = self.champion(name)
            if version is None:
                continue
            source = registry_source(name, str(version.version))
            if source == current.source:
                continue
            if source in self.refused:
                refused[source] = self.refused[source]
                continue
            try:
                folder = self.download(name, version)
            except BundleError as exc:  # may pass: tried again at the next poll
                logger.warning("%s; still serving %s", exc, current.source)
                continue
            try:
                served[name] = self._load(folder, current, source)
            except BundleError as exc:  # the bundle itself is bad: not tried again
                reason = f"refused {source}: {exc}; still serving {current.source}"
                logger.error("%s", reason)
                self.refused[source] = refused[source] = reason
                continue
            logger.info(
                "swapped model %s: version %s (%s) replaces version %s (%s)",
                name,
                served[name].manifest.version,
                source,
                current.manifest.version,
                current.source,
            )
        if served == models.models and refused == models.refused:
            return None
        return replace(models, models=served, refused=refused)

    def _load(self, folder: Path, current: Forecaster, source: str) -> Forecaster:
        candidate = load_forecaster(
            str(folder), self.settings.provider, self.settings.intra_op_threads, source=source
        )
        check_compatible(current, candidate)
        return candidate

    def download(self, name: str, version: Any) -> Path:
        """The version's bundle, cached under registry_cache_dir/<name>/<version>-<run id>
        (the run id too: a reset registry numbers its versions from 1 again)."""
        if not version.run_id:
            raise BundleError(f"registry version {name}/{version.version} names no run")
        target = self.settings.registry_cache_dir / name / f"{version.version}-{version.run_id}"
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}.", dir=target.parent))
        try:
            self.client().download_artifacts(version.run_id, BUNDLE_ARTIFACT, str(staging))
            (staging / BUNDLE_ARTIFACT).rename(target)  # whole, or not at all
        except Exception as exc:  # MLflow raises several types for a missing artifact
            if target.is_dir():  # another process (an api worker, a trainer) got there first
                return target
            raise BundleError(
                f"could not download the bundle of {name}/{version.version}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def check_compatible(current: Forecaster, candidate: Forecaster) -> None:
    """A new version may change weights and architecture, not the contract clients and
    stored windows rely on: name, frequency, input window, horizon, quantiles, covariates."""
    a, b = current.manifest, candidate.manifest
    for attribute in ("name", "frequency", "input_size", "horizon", "quantiles", "covariates"):
        if getattr(a, attribute) != getattr(b, attribute):
            raise BundleError(
                f"{attribute} is {getattr(b, attribute)!r}, but the served model's is "
                f"{getattr(a, attribute)!r}; a change like this needs a new model name"
            )
