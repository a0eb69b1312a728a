"""onnxruntime sessions for model bundles. No FastAPI here: the routes call ``predict``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import onnxruntime as ort

from service.bundle import Bundle, BundleError, BundleManifest, read_bundle
from service.config import Provider
from service.timeindex import calendar_covariate

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(requested: Provider) -> list[str]:
    """Execution providers in priority order for the requested setting."""
    available = ort.get_available_providers()
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise BundleError(
                f"provider 'cuda' was requested but onnxruntime offers only {available}; "
                "install onnxruntime-gpu with CUDA, or set FORECAST_PROVIDER=auto"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


# Rows per session call. A large batch runs as consecutive calls of this many rows: its
# intermediate buffers (the LSTM's gate inputs for every step) then stay a few megabytes and in
# the CPU's caches, and onnxruntime's memory arena never grows past them. A 1,000-series batch
# of the 60-step model took 82 ms in chunks of 64 against 106 ms in one call, and 150 ms in one
# call that gave its arena back afterwards (which kept a large batch from raising the api's
# resident memory by 110 MB for good). Chunks of 32 did better still in the api: its
# 1,000-series requests' p99 was lower than with 64 in 5 of 6 interleaved 10 s runs (median
# 90.7 against 96.8 ms); onnxruntime alone, on two threads, 50.4 against 54.6 ms (p50 of 150).
# On a GPU, where larger batches are cheaper per row, a batch runs whole.
CHUNK_ROWS = 32


@dataclass(slots=True)
class ModelRows:
    """Model forecasts as Python floats, by quantile: ``values[q][i]`` is series ``i``'s
    forecast of the model's ``q``-th quantile over the model's horizon.

    The batcher converts a session call's output once for all the requests it served, in the
    inference thread, and each request takes its rows by list slicing: a single-series request
    then makes no numpy call of its own for its answer. ``finite`` is False when some value is
    NaN or infinite (values near float32's limit overflow); the rows say which."""

    values: list[list[list[float]]]
    finite: bool

    def rows(self, start: int, end: int) -> ModelRows:
        return ModelRows([q[start:end] for q in self.values], self.finite)

    @classmethod
    def join(cls, parts: Sequence[ModelRows]) -> ModelRows:
        """Consecutive rows of one model, in order."""
        quantiles = range(len(parts[0].values))
        values = [[row for part in parts for row in part.values[q]] for q in quantiles]
        return cls(values, all(part.finite for part in parts))


def input_arrays(
    windows: Sequence[Sequence[float] | np.ndarray], positions: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Windows (rows of input_size values) and their calendar positions as the float32 arrays
    (B, L) and (B,) a session reads. A value beyond float32's range becomes inf, which
    ``Forecaster.accepts`` refuses."""
    with np.errstate(over="ignore"):
        stacked = np.asarray(windows, dtype=np.float32)
    return stacked, np.asarray(positions, dtype=np.float32)


def model_rows(output: np.ndarray) -> ModelRows:
    """A session call's output (B, H, Q) float32 as ModelRows."""
    return ModelRows(
        output.transpose(2, 0, 1).astype(np.float64).tolist(), bool(np.isfinite(output).all())
    )


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the batcher's key
class Forecaster:
    """One loaded bundle: its manifest and an onnxruntime session.

    ``predict`` is thread-safe (onnxruntime sessions allow concurrent ``run`` calls), so the
    api may call it from the event loop and from worker threads at once.
    """

    bundle: Bundle
    session: ort.InferenceSession
    loaded_at: datetime
    source: str  # where the bundle came from: "folder:<path>" or "registry:models:/<name>/<v>"

    @property
    def manifest(self) -> BundleManifest:
        return self.bundle.manifest

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    @property
    def chunk_rows(self) -> int | None:
        """Rows per session call (CHUNK_ROWS on the CPU; None: any batch runs whole)."""
        return CHUNK_ROWS if self.provider == CPU else None

    def accepts(self, windows: np.ndarray) -> bool:
        """Whether every input window (B, L) is finite in float32, and positive for a model
        that takes logs: the usual case, in two numpy calls (nan > 0 is False)."""
        if self.manifest.input_domain == "positive":
            return bool(windows.min(initial=np.inf) > 0 and windows.max(initial=0) < np.inf)
        return bool(np.isfinite(windows).all())

    def predict(self, windows: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Raw input windows (B, L) float32 -> quantile forecasts (B, H, Q) float32.

        A model with a calendar covariate also reads ``positions`` (B,): each series' first
        forecast step's position in the seasonal period (``timeindex.season_position``)."""
        window_spec, *covariate_specs = self.manifest.inputs
        feed = {window_spec.name: windows}
        if covariate_specs:
            if positions is None:
                raise ValueError(f"model {self.manifest.name!r} reads {self.manifest.covariates}")
            feed[covariate_specs[0].name] = positions.astype(np.float32, copy=False)
        output_name = self.manifest.outputs[0].name
        # Small batches never ask for the provider (a call into onnxruntime) at all.
        chunk = self.chunk_rows if len(windows) > CHUNK_ROWS else None
        if chunk is None:
            return np.asarray(self.session.run([output_name], feed)[0])
        parts = [
            self.session.run(
                [output_name], {name: part[start : start + chunk] for name, part in feed.items()}
            )[0]
            for start in range(0, len(windows), chunk)
        ]
        return np.concatenate(parts)


def load_forecaster(
    bundle_dir: str, provider: Provider, intra_op_threads: int, source: str | None = None
) -> Forecaster:
    """Read, verify and warm up a bundle. Raises BundleError when it can't be served."""
    bundle = read_bundle(bundle_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(
            str(bundle.model_path), sess_options=options, providers=choose_providers(provider)
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise BundleError(f"onnxruntime could not load {bundle.model_path}: {exc}") from exc
    forecaster = Forecaster(
        bundle=bundle,
        session=session,
        loaded_at=datetime.now(UTC),
        source=source or f"folder:{bundle_dir}",
    )
    _check_graph_matches_manifest(forecaster)
    _warm_up(forecaster)
    return forecaster


def _check_graph_matches_manifest(forecaster: Forecaster) -> None:
    m, session = forecaster.manifest, forecaster.session
    declared = [(t.name, t.shape) for t in m.inputs], [(t.name, t.shape) for t in m.outputs]
    actual = (
        [(t.name, list(t.shape)) for t in session.get_inputs()],
        [(t.name, list(t.shape)) for t in session.get_outputs()],
    )
    if declared != actual:
        raise BundleError(f"graph signature {actual} does not match the manifest's {declared}")
    if len(m.inputs) != 1 + len(m.covariates) or len(m.covariates) > 1:
        raise BundleError(
            f"the manifest lists covariates {m.covariates} and inputs "
            f"{[t.name for t in m.inputs]}: expected the window plus at most one calendar input"
        )
    if m.covariates and (m.frequency is None or m.covariates != [calendar_covariate(m.frequency)]):
        raise BundleError(
            f"covariates {m.covariates} can't be computed for frequency {m.frequency!r}; the "
            "service computes one calendar covariate from timestamps (month_of_year for MS...)"
        )
    if m.inputs[0].shape[1:] != [m.input_size]:
        raise BundleError(
            f"graph input {m.inputs[0].shape} does not read input_size={m.input_size}"
        )
    if m.outputs[0].shape[1:] != [m.horizon, len(m.quantiles)]:
        raise BundleError(
            f"graph output {m.outputs[0].shape} is not (batch, horizon={m.horizon}, "
            f"quantiles={len(m.quantiles)})"
        )


def _warm_up(forecaster: Forecaster) -> None:
    """One inference on a plausible batch, so a broken graph is refused before it serves."""
    m = forecaster.manifest
    ramp = np.linspace(1.0, 2.0, m.input_size, dtype=np.float32)
    windows = np.stack([ramp, ramp * 100.0])  # (2, L): batch > 1 proves the batch axis is free
    positions = np.array([0.0, m.seasonal_period - 1], dtype=np.float32)
    try:
        out = forecaster.predict(windows, positions)
    except Exception as exc:
        raise BundleError(f"warm-up inference failed: {exc}") from exc
    if out.shape != (2, m.horizon, len(m.quantiles)) or not np.isfinite(out).all():
        raise BundleError(f"warm-up inference returned shape {out.shape} or non-finite values")
    logger.info(
        "loaded model %s version %s on %s (input_size=%d, horizon=%d)",
        m.name,
        m.version,
        forecaster.provider,
        m.input_size,
        m.horizon,
    )
