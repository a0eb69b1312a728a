"""The contract every model variant passes: train a few steps, export, and onnxruntime (through
the service's own loader) returns what torch returns, for any batch size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import TrainingDataSummary, write_bundle
from service.config import Settings
from service.forecasting import infer, plan_request
from service.inference import load_forecaster
from service.model_set import ModelSet
from service.schemas import ForecastRequest, SeriesInput
from tests.conftest import AIR_CSV
from training.data import SeriesCalendar, holdout_split, load_long_csv, series_values, summarize
from training.export import ParityError, build_manifest, check_parity, export_onnx, parity_cases
from training.model import Checkpoint, EnsembleForecaster, ForecasterConfig, RecurrentForecaster
from training.train import TrainConfig, fit, predict

VARIANTS = {
    "lstm_stacked": dict(cell="lstm", num_layers=2, dropout=0.1),
    "lstm_single": dict(cell="lstm", num_layers=1, dropout=0.0),
    "gru_stacked": dict(cell="gru", num_layers=2, dropout=0.1),
    "lstm_quantiles": dict(cell="lstm", num_layers=2, quantiles=(0.1, 0.5, 0.9)),
    "lstm_log": dict(cell="lstm", num_layers=2, transform="log", quantiles=(0.1, 0.5, 0.9)),
    "lstm_bidirectional": dict(cell="lstm", num_layers=2, bidirectional=True),
    "lstm_log_deseasonalised": dict(
        cell="lstm", num_layers=2, transform="log", season_length=12, quantiles=(0.1, 0.5, 0.9)
    ),
    "lstm_log_season_gate": dict(
        cell="lstm", transform="log", season_length=12, season_gate=True, conv_channels=4
    ),
    "lstm_calendar": dict(cell="lstm", calendar_period=12, quantiles=(0.1, 0.5, 0.9)),
    "gru_conv_front": dict(cell="gru", num_layers=1, conv_channels=4, conv_kernel=3),
    "lstm_attention": dict(cell="lstm", num_layers=2, head="attention", quantiles=(0.1, 0.5, 0.9)),
    "bilstm_conv_attention": dict(
        cell="lstm", num_layers=1, bidirectional=True, conv_channels=4, head="attention"
    ),
}


@pytest.fixture(scope="module")
def air():
    df = load_long_csv(AIR_CSV, freq="MS")
    calendar = SeriesCalendar.of(df, "MS")
    return df, holdout_split(series_values(df), input_size=12, horizon=6, calendar=calendar)


def _cases(split, df, positive=False):
    values = df["y"].to_numpy()
    return parity_cases(
        split.test_x,
        split.test_pos,
        (values.min(), values.max()),
        positive=positive,
        period=12,
    )


def _bundle(
    model: RecurrentForecaster, model_bytes: bytes, summary: TrainingDataSummary, parity, out: Path
):
    manifest = build_manifest(
        name="tiny",
        version="test",
        model=model,
        model_bytes=model_bytes,
        frequency="MS",
        seasonal_period=12,
        training={},
        training_data=summary,
        metrics={},
        parity=parity,
        mlflow_ref=None,
    )
    return write_bundle(out, model_bytes, manifest)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_exports_and_serves_like_torch(variant, air, tmp_path):
    df, split = air
    config = ForecasterConfig(input_size=12, horizon=6, hidden_size=8, **VARIANTS[variant])
    result = fit(config, TrainConfig(max_epochs=3, seed=1), split, progress=False)
    assert len(result.history) == 3 and np.isfinite(result.best_val_loss)

    model_bytes = export_onnx(result.model)
    parity = check_parity(
        result.model,
        model_bytes,
        _cases(split, df, positive=result.model.positive_only),
    )
    assert parity.max_scaled_diff <= 1e-4
    assert [c.split(":")[0] for c in parity.checks] == [
        "heldout",
        "random_batch_1",
        "random_batch_256",
        "random_data_range_256 (stress, not gating)",
    ]

    bundle = _bundle(result.model, model_bytes, summarize(df, AIR_CSV), parity, tmp_path / variant)
    forecaster = load_forecaster(str(bundle.path), "cpu", 1)
    assert forecaster.manifest.covariates == (["month_of_year"] if config.calendar_period else [])
    for batch in (1, 5, 64):  # the batch axis is dynamic in the exported graph
        rng = np.random.default_rng(batch)
        windows = rng.uniform(100, 600, (batch, 12)).astype(np.float32)
        positions = rng.integers(0, 12, batch).astype(np.float32)
        got = forecaster.predict(windows, positions)
        want = predict(result.model, windows, positions if config.calendar_period else None)
        assert got.shape == (batch, 6, len(config.quantiles))
        unit = np.maximum(1.0, windows.std(axis=1))[:, None, None]
        assert (np.abs(got - want) / unit).max() <= 1e-4


def test_flat_window_gives_a_flat_finite_forecast():
    model = RecurrentForecaster(ForecasterConfig(input_size=12, horizon=3, hidden_size=8)).eval()
    out = predict(model, np.full((1, 12), 500.0, dtype=np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 500.0, atol=1e-3)  # scale ~eps: output sits at the level


def test_parity_gate_refuses_a_graph_that_differs_from_torch(air):
    df, split = air
    config = ForecasterConfig(input_size=12, horizon=6, hidden_size=8)
    model = RecurrentForecaster(config).eval()
    model_bytes = export_onnx(model)
    with torch.no_grad():  # perturb torch's weights after export: the graph no longer matches
        model.head.bias += 0.01
    with pytest.raises(ParityError, match="differs from torch on heldout"):
        check_parity(model, model_bytes, _cases(split, df))


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    config = ForecasterConfig(input_size=12, horizon=3, hidden_size=8)
    model = RecurrentForecaster(config).eval()
    path = tmp_path / "model.pt"
    Checkpoint.of(model).save(str(path))
    rebuilt = Checkpoint.load(str(path)).build()
    windows = np.random.default_rng(0).uniform(0, 10, (4, 12)).astype(np.float32)
    np.testing.assert_array_equal(predict(model, windows), predict(rebuilt, windows))


def test_ensemble_of_two_lengths_and_cells_exports_and_serves_the_median(air, tmp_path):
    df, split = air
    members = [
        RecurrentForecaster(
            ForecasterConfig(
                input_size=L, horizon=6, hidden_size=8, cell=cell, quantiles=(0.1, 0.5, 0.9)
            )
        ).eval()
        for L, cell in ((8, "lstm"), (12, "gru"), (10, "lstm"))
    ]
    ensemble = EnsembleForecaster(members).eval()
    assert ensemble.input_size == 12
    windows = np.random.default_rng(3).uniform(100, 600, (5, 12)).astype(np.float32)
    each = np.stack([predict(m, windows[:, -m.input_size :]) for m in members])  # (3, B, H, Q)
    np.testing.assert_allclose(predict(ensemble, windows), np.median(each, axis=0), rtol=1e-6)
    model_bytes = export_onnx(ensemble)
    parity = check_parity(ensemble, model_bytes, _cases(split, df))
    bundle = _bundle(ensemble, model_bytes, summarize(df, AIR_CSV), parity, tmp_path / "ens")
    assert bundle.manifest.architecture["ensemble"] == "median"
    assert len(bundle.manifest.architecture["members"]) == 3
    served = load_forecaster(str(bundle.path), "cpu", 1).predict(windows)
    unit = np.maximum(1.0, windows.std(axis=1))[:, None, None]
    assert (np.abs(served - predict(ensemble, windows)) / unit).max() <= 1e-4
    assert (np.diff(served, axis=-1) >= 0).all()  # quantiles stay ordered after the median
    Checkpoint.of(ensemble).save(str(tmp_path / "ens.pt"))
    rebuilt = Checkpoint.load(str(tmp_path / "ens.pt")).build()
    np.testing.assert_array_equal(predict(rebuilt, windows), predict(ensemble, windows))


def test_seasonal_profile_is_removed_from_the_window_and_added_to_the_forecast():
    from training.model import SeasonalProfile

    season = SeasonalProfile(input_size=8, horizon=3, season_length=4)
    pattern = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    level = torch.tensor([10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0], dtype=torch.float64)
    window, past, future = season((level + pattern.repeat(2)).unsqueeze(0))
    torch.testing.assert_close(window[0], level)  # the pattern is gone, the level stays
    torch.testing.assert_close(past[0], pattern.repeat(2))  # what was removed
    torch.testing.assert_close(future[0], pattern[:3])  # steps 8, 9, 10 are positions 0, 1, 2


def test_season_gate_returns_none_to_all_of_the_profile():
    """The gate scales the profile added back to the forecast: closed, the forecast is the
    deseasonalised one; open, the whole profile returns (as without a gate)."""
    config = ForecasterConfig(input_size=8, horizon=3, hidden_size=4, season_length=4)
    fixed = RecurrentForecaster(config).eval()
    gated = RecurrentForecaster(replace(config, season_gate=True)).eval()
    pattern = torch.tensor([1.0, -1.0, 2.0, -2.0])
    level = torch.tensor([10.0] * 4 + [20.0] * 4)  # flat within each cycle
    window = (level + pattern.repeat(2)).unsqueeze(0)  # (1, 8)
    with torch.no_grad():
        _, loc_fixed, _ = fixed.forward_scaled(window)
        gated.gate.bias.fill_(-50.0)  # closed
        _, loc_closed, _ = gated.forward_scaled(window)
        gated.gate.bias.fill_(50.0)  # open
        _, loc_open, _ = gated.forward_scaled(window)
    # Closed: the deseasonalised window's mean (15), the same at every step.
    torch.testing.assert_close(loc_closed, torch.full((1, 3), 15.0, dtype=torch.float64))
    torch.testing.assert_close(loc_open, loc_fixed)
    torch.testing.assert_close(loc_open - loc_closed, pattern[:3].double().unsqueeze(0))


def test_calendar_model_reads_the_position_and_the_service_computes_it(air, tmp_path):
    """A calendar model's forecast depends on the month it starts in; the service feeds the
    position of the first forecast month, from the timestamps alone."""
    df, split = air
    config = ForecasterConfig(input_size=12, horizon=6, hidden_size=8, calendar_period=12)
    model = fit(config, TrainConfig(max_epochs=2, seed=0), split, progress=False).model
    window = split.test_x[:1]
    january, july = (predict(model, window, np.array([p], np.float32)) for p in (0.0, 6.0))
    assert np.abs(january - july).max() > 1e-3
    model_bytes = export_onnx(model)
    parity = check_parity(model, model_bytes, _cases(split, df))
    bundle = _bundle(model, model_bytes, summarize(df, AIR_CSV), parity, tmp_path / "cal")
    assert [t.name for t in bundle.manifest.inputs] == ["y", "season_position"]
    forecaster = load_forecaster(str(bundle.path), "cpu", 1)
    models = ModelSet(models={"tiny": forecaster})
    history = df["y"].tolist()[:-6]  # 1949-01 .. 1960-06: the forecast starts in July (6)
    request = ForecastRequest(
        series=[SeriesInput(id="air", history=history, start="1949-01-01", freq="MS")],
        horizon=6,
    )
    (served,) = infer(plan_request(request, models, Settings()), request)
    expected = predict(model, np.asarray([history[-12:]], np.float32), np.array([6.0], np.float32))
    np.testing.assert_allclose(served.values, expected[0, :, 0], rtol=1e-5)
    assert split.test_pos[0] == 6  # the split agrees: the test part starts in July 1960
