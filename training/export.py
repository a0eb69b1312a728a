"""ONNX export, the parity gate against torch, and the bundle written for the service."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.bundle import (
    BundleManifest,
    MlflowRef,
    ParityReport,
    TensorSpec,
    TrainingDataSummary,
)
from service.timeindex import calendar_covariate
from training.model import Forecaster
from training.train import predict

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "y", "forecast"
# Calendar models take a second input: the first forecast step's position in the period.
POSITION_NAME = "season_position"
# The parity gate. A difference is measured in units of the input window's standard deviation
# (never less than 1): for standard-normal windows that is the plain absolute difference, and
# for real series it is the scale the network computes in. Raw absolute differences can't be
# held to 1e-4 for outputs in the hundreds or thousands: torch's and onnxruntime's LSTM kernels
# already differ by a few float32 ulps there (1 ulp at 600 is 6e-5). Both figures are recorded.
# Models that take logs are compared in log units (their own): on wild inputs their exp makes
# outputs so large that float32 rounding alone passes 1e-4 of the raw window's std. The gating
# cases are the held-out windows and random batches of 1 and 256.
TOLERANCE = 1e-4
PARITY_RULE = (
    "|onnxruntime - torch| <= 1e-4 * max(1, std of the input window); "
    "for models that take logs, both sides in log units"
)


class ParityError(RuntimeError):
    """onnxruntime's output differs from torch's beyond the tolerance: the export is refused."""


def input_names(model: Forecaster) -> list[str]:
    return [INPUT_NAME, POSITION_NAME] if model.calendar_period else [INPUT_NAME]


def export_onnx(model: Forecaster) -> bytes:
    """Serialize the module with a dynamic batch axis; the window length L is fixed."""
    model = model.eval()
    example = torch.rand(2, model.input_size) * 100.0 + 1.0  # (B, L), positive for log models
    batch = torch.export.Dim("batch")
    args: tuple[torch.Tensor, ...] = (example,)
    dynamic_shapes: dict[str, dict[int, object]] = {"y": {0: batch}}
    if model.calendar_period:
        args = (example, torch.tensor([0.0, 5.0]))  # (B,) positions
        dynamic_shapes["position"] = {0: batch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about internals we don't control
        program = torch.onnx.export(
            model,
            args,
            input_names=input_names(model),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    onnx.checker.check_model(proto)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class ParityCase:
    name: str
    windows: np.ndarray  # (B, L) raw values
    positions: np.ndarray  # (B,) calendar positions (read by calendar models only)
    # False: a stress case, recorded in the report but not refusing the export (i.i.d. windows
    # spanning the data's whole range are no series' shape; a model may extrapolate wildly).
    gate: bool = True


def parity_cases(
    heldout: np.ndarray,
    heldout_positions: np.ndarray,
    data_range: tuple[float, float],
    *,
    seed: int = 0,
    positive: bool = False,
    period: int = 1,
) -> list[ParityCase]:
    """Held-out windows, standard-normal batches of 1 and 256 (log-normal for models that
    need positive inputs) at random calendar positions: these gate the export. Plus a stress
    case that is only recorded: 256 windows drawn uniformly from the data's value range."""
    rng = np.random.default_rng(seed)
    input_size = heldout.shape[1]

    def positions(batch: int) -> np.ndarray:
        return rng.integers(0, max(1, period), batch).astype(np.float32)

    def random(batch: int) -> np.ndarray:
        draws = rng.standard_normal((batch, input_size))
        return (np.exp(draws) if positive else draws).astype(np.float32)

    return [
        ParityCase("heldout", heldout.astype(np.float32), heldout_positions.astype(np.float32)),
        ParityCase("random_batch_1", random(1), positions(1)),
        ParityCase("random_batch_256", random(256), positions(256)),
        ParityCase(
            "random_data_range_256",
            rng.uniform(*data_range, size=(256, input_size)).astype(np.float32),
            positions(256),
            gate=False,
        ),
    ]


def _scaled_diff(
    model: Forecaster, windows: np.ndarray, actual: np.ndarray, expected: np.ndarray
) -> np.ndarray:
    """|onnxruntime - torch| in units of max(1, the window's std), both in the units the network
    computes in: logs for models that take logs. (B, L), (B, H, Q) x 2 -> (B, H, Q)."""
    w, a, e = (v.astype(np.float64) for v in (windows, actual, expected))
    if model.positive_only:
        # A non-positive output is a failure in log units too: log gives -inf or NaN there.
        with np.errstate(divide="ignore", invalid="ignore"):
            w, a, e = np.log(w), np.log(a), np.log(e)
    unit = np.maximum(1.0, w.std(axis=1))  # (B,)
    return np.abs(a - e) / unit[:, None, None]


def check_parity(model: Forecaster, model_bytes: bytes, cases: list[ParityCase]) -> ParityReport:
    """Run every case through torch and onnxruntime; raise ParityError past the tolerance."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    max_abs, max_scaled, checks = 0.0, 0.0, []
    for case in cases:
        positions = case.positions if model.calendar_period else None
        expected = predict(model, case.windows, positions)  # (B, H, Q)
        feed = {INPUT_NAME: case.windows}
        if positions is not None:
            feed[POSITION_NAME] = positions
        (actual,) = session.run([OUTPUT_NAME], feed)
        diff = np.abs(actual.astype(np.float64) - expected)  # (B, H, Q)
        case_abs = float(diff.max())
        scaled = _scaled_diff(model, case.windows, actual, expected)  # (B, H, Q)
        case_scaled = float(scaled.max())
        if not case.gate:
            checks.append(
                f"{case.name} (stress, not gating): batch {len(case.windows)}, "
                f"max abs {case_abs:.3g}, scaled {case_scaled:.3g}"
            )
            continue
        if not case_scaled <= TOLERANCE:  # also catches NaN
            raise ParityError(
                f"onnxruntime differs from torch on {case.name}: {case_scaled:.3g} window-std "
                f"units (max abs {case_abs:.3g}); the rule is {PARITY_RULE}"
            )
        max_abs, max_scaled = max(max_abs, case_abs), max(max_scaled, case_scaled)
        checks.append(
            f"{case.name}: batch {len(case.windows)}, max abs {case_abs:.3g}, "
            f"scaled {case_scaled:.3g}"
        )
    return ParityReport(
        max_abs_diff=max_abs,
        max_scaled_diff=max_scaled,
        tolerance=TOLERANCE,
        rule=PARITY_RULE,
        checks=checks,
    )


def build_manifest(
    *,
    name: str,
    version: str,
    model: Forecaster,
    model_bytes: bytes,
    frequency: str | None,
    seasonal_period: int,
    training: dict[str, object],
    training_data: TrainingDataSummary,
    metrics: dict[str, dict[str, float]],
    parity: ParityReport,
    mlflow_ref: MlflowRef | None,
    checkpoint_sha256: str | None = None,
) -> BundleManifest:
    covariate = None
    if model.calendar_period:
        covariate = calendar_covariate(frequency) if frequency else None
        if covariate is None or seasonal_period != model.calendar_period:
            raise ValueError(
                f"a calendar model (period {model.calendar_period}) needs a frequency with "
                f"that seasonal period; got {frequency!r} (period {seasonal_period})"
            )
    return BundleManifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        input_size=model.input_size,
        horizon=model.horizon,
        frequency=frequency,
        seasonal_period=seasonal_period,
        quantiles=list(model.quantiles),
        input_domain="positive" if model.positive_only else "real",
        inputs=[TensorSpec(name=INPUT_NAME, shape=["batch", model.input_size])]
        + ([TensorSpec(name=POSITION_NAME, shape=["batch"])] if covariate else []),
        covariates=[covariate] if covariate else [],
        outputs=[
            TensorSpec(name=OUTPUT_NAME, shape=["batch", model.horizon, len(model.quantiles)])
        ],
        architecture=model.describe(),
        training=training,
        training_data=training_data,
        metrics=metrics,
        parity=parity,
        mlflow=mlflow_ref,
        opset=OPSET,
        onnx_sha256=hashlib.sha256(model_bytes).hexdigest(),
        checkpoint_sha256=checkpoint_sha256,
    )
