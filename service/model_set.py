"""Every bundle under the models folder, and which one serves a series."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from service.bundle import MANIFEST_FILE, BundleError
from service.config import Provider
from service.errors import FrequencyNotServed, Loc, UnknownModel
from service.inference import Forecaster, load_forecaster
from service.timeindex import same_frequency

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSet:
    """Loaded models by name; ``defaults`` maps a frequency alias to the model that serves it
    when several could; ``refused`` maps a bundle folder to why it was not loaded."""

    models: dict[str, Forecaster]
    defaults: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    # for_frequency's answers (the set never changes: a swap builds a new one, and
    # dataclasses.replace leaves this out, init=False, so it starts empty there too).
    _routes: dict[str, Forecaster] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def served_frequencies(self) -> list[str]:
        return sorted({f.manifest.frequency for f in self.models.values() if f.manifest.frequency})

    def named(self, name: str, loc: Loc) -> Forecaster:
        if name not in self.models:
            raise UnknownModel(f"no model named {name!r}; loaded: {sorted(self.models)}", loc)
        return self.models[name]

    def for_frequency(self, freq: str, loc: Loc) -> Forecaster:
        """The model for a frequency: the configured default, else the first by name."""
        routed = self._routes.get(freq)
        if routed is None:
            routed = self._routes[freq] = self._choose(freq, loc)
        return routed

    def _choose(self, freq: str, loc: Loc) -> Forecaster:
        candidates = [
            name
            for name, f in sorted(self.models.items())
            if f.manifest.frequency is not None and same_frequency(f.manifest.frequency, freq)
        ]
        if not candidates:
            raise FrequencyNotServed(
                f"frequency {freq!r} is not served; the models serve {self.served_frequencies}",
                loc,
            )
        preferred = next(
            (name for alias, name in self.defaults.items() if same_frequency(alias, freq)), None
        )
        return self.models[preferred if preferred in candidates else candidates[0]]


def load_model_set(
    models_dir: Path, provider: Provider, intra_op_threads: int, defaults: dict[str, str]
) -> ModelSet:
    """Load every bundle folder (one holding a manifest) under ``models_dir``. A bundle that
    fails its checks is refused and logged; the others still serve."""
    models: dict[str, Forecaster] = {}
    refused: dict[str, str] = {}
    folders = sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_FILE}"))
    if not folders:
        refused[str(models_dir)] = f"no bundle folders (*/{MANIFEST_FILE}) under {models_dir}"
    for folder in folders:
        try:
            forecaster = load_forecaster(str(folder), provider, intra_op_threads)
        except BundleError as exc:
            logger.error("refused bundle %s: %s", folder, exc)
            refused[str(folder)] = str(exc)
            continue
        name = forecaster.manifest.name
        if name in models:
            refused[str(folder)] = f"a model named {name!r} is already loaded from another folder"
            continue
        models[name] = forecaster
    return ModelSet(models=models, defaults=defaults, refused=refused)
