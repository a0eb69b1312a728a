"""Retraining end to end, against PostgreSQL: the api and workers as their own processes, a
real MLflow registry, and a client that keeps forecasting throughout.

The champion is a tiny model in a bundle folder; the stored series are AirPassengers and a
dozen synthetic monthly series.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from service.bundle import MODEL_FILE
from service.db import migrate
from tests.conftest import AIR_CSV, REPO, fresh_database, start_api_process, store_series

pytestmark = pytest.mark.slow

TOKEN = "e2e-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "tiny"


def synthetic_series(n: int = 12) -> pd.DataFrame:
    """Monthly series with trend, yearly season and noise, 96 to 140 months long."""
    rng = np.random.default_rng(0)
    frames = [pd.read_csv(AIR_CSV, parse_dates=["ds"])]
    for i in range(n):
        length = int(rng.integers(96, 141))
        t = np.arange(length)
        level = rng.uniform(50, 500) * (1 + rng.uniform(0, 0.01) * t)
        season = 1 + rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * (t + i) / 12)
        y = level * season * rng.lognormal(0, 0.03, length)
        ds = pd.date_range("2000-01-01", periods=length, freq="MS")
        frames.append(pd.DataFrame({"unique_id": f"s{i:02d}", "ds": ds, "y": y.round(3)}))
    return pd.concat(frames, ignore_index=True)


@dataclass
class Stack:
    work: Path
    env: dict[str, str]
    base: str
    api: subprocess.Popen[str]
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    def mlflow(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.env["MLFLOW_TRACKING_URI"])

    def start_worker(self) -> subprocess.Popen[str]:
        log = (self.work / f"worker-{len(self.workers)}.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "training", "worker"],
            cwd=self.work,
            env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """SIGTERM every worker still running, so the next test knows who claims its job."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.base}/retrain/{job_id}", headers=ADMIN).json()

    def start_long_job(self) -> tuple[str, dict]:
        """Queue a retrain that trains for a while (30 epochs from scratch, about a third of a
        second each here, never promoted) and wait until a worker is two epochs into it;
        returns its id and that state."""
        response = httpx.post(
            f"{self.base}/retrain",
            json={
                "model": MODEL,
                "mode": "scratch",
                "promote": "never",
                "overrides": {"max_epochs": 30, "patience": 30},
            },
            headers=ADMIN,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        running = self.wait_job(
            job_id,
            lambda j: j["status"] == "running" and (j["progress"] or {}).get("epoch", 0) >= 2,
        )
        return job_id, running

    def wait_job(self, job_id: str, until, timeout_s: float = 180) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        logs = "\n".join(p.read_text()[-3000:] for p in self.work.glob("worker-*.log"))
        raise AssertionError(f"job {job_id} never got there: {self.job(job_id)}\n{logs}")

    def models(self) -> dict:
        return httpx.get(f"{self.base}/models", headers=ADMIN).json()

    def served_version(self) -> str:
        return httpx.get(f"{self.base}/models/{MODEL}", headers=ADMIN).json()["version"]


def fit_bundle(work: Path, env: dict[str, str], out: Path, input_size: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            "--data",
            str(work / "series.csv"),
            "--horizon",
            "6",
            "--freq",
            "MS",
            "--name",
            MODEL,
            "--out",
            str(out),
            "--input-size",
            str(input_size),
            "--hidden-size",
            "8",
            "--max-epochs",
            "30",
            "--patience",
            "5",
            "--transform",
            "log",
            "--no-register",
            "--no-progress",
        ],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("retrain")
    series = synthetic_series()
    series.to_csv(work / "series.csv", index=False)
    with fresh_database("postgresql", work) as url:
        migrate.upgrade(url)
        env = {
            "DATABASE_URL": url,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "FORECAST_MODELS_DIR": str(work / "models"),
            "FORECAST_ADMIN_TOKEN": TOKEN,
            "FORECAST_REGISTRY_POLL_S": "0.5",
            "FORECAST_REGISTRY_CACHE_DIR": str(work / "registry"),
            "FORECAST_RETRAIN_LEASE_S": "4",
            "FORECAST_RETRAIN_HEARTBEAT_S": "0.5",
            "FORECAST_WORKER_POLL_S": "0.3",
        }
        fit_bundle(work, env, work / "models" / MODEL, input_size=12)
        api, base = start_api_process(env, work, capture=False)
        stack = Stack(work, env, base, api)
        for uid, group in series.groupby("unique_id"):
            store_series(base, str(uid), group, token=TOKEN)
        try:
            yield stack
        finally:
            for proc in [*stack.workers, api]:
                proc.kill()
                proc.wait()


@contextmanager
def forecasting(stack: Stack) -> Iterator[list[tuple[int, str | None]]]:
    """A client forecasting the stored AirPassengers series without pause, in a thread; yields
    the (status, model version) of every response so far."""
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=stack.base, timeout=10, headers=ADMIN) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/forecast", json={"series": [{"id": "AirPassengers"}], "horizon": 6}
                    )
                    version = r.json()["forecasts"][0]["model"]["version"] if r.is_success else None
                    seen.append((r.status_code, version))
                except httpx.HTTPError:
                    seen.append((0, None))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=15)


def versions_in_order(seen: list[tuple[int, str | None]]) -> list[str | None]:
    """The distinct versions in the order they were first served, runs collapsed."""
    runs: list[str | None] = []
    for _, version in seen:
        if not runs or runs[-1] != version:
            runs.append(version)
    return runs


def test_retrain_promotes_and_the_api_swaps_with_no_failed_request(stack):
    old = stack.served_version()
    worker = stack.start_worker()
    with forecasting(stack) as seen:
        time.sleep(1)
        response = httpx.post(
            f"{stack.base}/retrain", json={"model": MODEL, "promote": "always"}, headers=ADMIN
        )
        assert response.status_code == 202, response.text
        job = stack.wait_job(
            response.json()["id"], lambda j: j["status"] not in ("queued", "running")
        )
        assert job["status"] == "succeeded", job
        new = job["model_version"]
        deadline = time.monotonic() + 30
        while stack.served_version() != new and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # keep forecasting on the new version a while
    assert all(status == 200 for status, _ in seen), {s for s, _ in seen}
    assert versions_in_order(seen) == [old, new]  # changed exactly once
    assert job["decision"] == "promoted" and job["candidate"]["version"] == new
    assert job["champion"]["source"].startswith("folder:") and job["progress"]["epoch"] > 0
    assert str(stack.mlflow().get_model_version_by_alias(MODEL, "champion").version) == new
    info = httpx.get(f"{stack.base}/models/{MODEL}", headers=ADMIN).json()
    assert info["source"] == f"registry:models:/{MODEL}/{new}"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_a_worse_candidate_is_rejected_with_its_metrics_and_the_champion_stays(stack):
    champion = str(stack.mlflow().get_model_version_by_alias(MODEL, "champion").version)
    worker = stack.start_worker()
    response = httpx.post(
        f"{stack.base}/retrain",
        json={
            "model": MODEL,
            "mode": "scratch",  # new weights, one epoch, barely moving: a deliberately bad model
            "overrides": {"max_epochs": 1, "learning_rate": 1e-6},
        },
        headers=ADMIN,
    )
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "rejected", job
    assert job["decision"] == "kept_champion" and "not better" in job["reason"]
    assert job["candidate"]["mase"] > job["champion"]["mase"]
    assert job["champion"]["version"] == champion and job["model_version"] != champion
    assert str(stack.mlflow().get_model_version_by_alias(MODEL, "champion").version) == champion
    time.sleep(1.5)  # a few registry polls: nothing moves
    assert stack.served_version() == champion
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


def register_bundle(stack: Stack, folder: Path) -> str:
    """Register a bundle folder as a new version, as a training run does."""
    client = stack.mlflow()
    experiment = client.get_experiment_by_name("e2e-bundles") or client.get_experiment(
        client.create_experiment("e2e-bundles")
    )
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "bundle")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        MODEL, source=f"runs:/{run.info.run_id}/bundle", run_id=run.info.run_id
    )
    return str(version.version)


def test_corrupt_and_incompatible_bundles_are_refused_and_the_old_one_keeps_serving(stack):
    client = stack.mlflow()
    good = str(client.get_model_version_by_alias(MODEL, "champion").version)
    corrupt = stack.work / "corrupt"
    (cached,) = (stack.work / "registry" / MODEL).glob(f"{good}-*")  # what the api downloaded
    shutil.copytree(cached, corrupt)
    data = bytearray((corrupt / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (corrupt / MODEL_FILE).write_bytes(bytes(data))
    wider = stack.work / "wider"
    fit_bundle(stack.work, stack.env, wider, input_size=24)  # reads 24 months, not 12
    cases = {"sha256": register_bundle(stack, corrupt), "input_size": register_bundle(stack, wider)}
    with forecasting(stack) as seen:
        for reason, version in cases.items():
            client.set_registered_model_alias(MODEL, "champion", version)
            source = f"registry:models:/{MODEL}/{version}"
            deadline = time.monotonic() + 30
            while source not in (refused := stack.models()["refused"]):
                assert time.monotonic() < deadline, refused
                time.sleep(0.2)
            assert reason in refused[source] and "still serving" in refused[source]
            assert stack.served_version() == good
        client.set_registered_model_alias(MODEL, "champion", good)  # the rollback
        time.sleep(1.5)
    assert seen and all(status == 200 for status, _ in seen)
    assert versions_in_order(seen) == [good]


def test_a_worker_killed_mid_training_has_its_job_requeued_and_finished_by_another(stack):
    first = stack.start_worker()
    job_id, running = stack.start_long_job()
    assert running["attempts"] == 1
    first.kill()  # SIGKILL: no clean-up, no release; only the lease can tell
    first.wait()
    killed_at = time.monotonic()
    stack.start_worker()
    requeued = stack.wait_job(job_id, lambda j: j["attempts"] == 2, timeout_s=30)
    lease_s = float(stack.env["FORECAST_RETRAIN_LEASE_S"])
    assert time.monotonic() - killed_at < lease_s + 5  # within the lease (plus a poll or two)
    assert requeued["status"] in ("queued", "running", "succeeded")
    done = stack.wait_job(job_id, lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["decision"] == "not_promoted", done
    assert done["attempts"] == 2


def test_sigterm_mid_training_puts_the_job_back_in_the_queue(stack):
    stack.stop_workers()
    worker = stack.start_worker()
    job_id, _ = stack.start_long_job()
    worker.send_signal(signal.SIGTERM)  # as compose stops it: finish the epoch, give the job back
    assert worker.wait(timeout=60) == 0
    released = stack.job(job_id)
    assert released["status"] == "queued" and released["attempts"] == 0, released
    stack.start_worker()
    done = stack.wait_job(job_id, lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
