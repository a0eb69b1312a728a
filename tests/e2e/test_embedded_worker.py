"""Embedded mode: ``python -m service serve`` with nothing configured runs one retrain worker as
its child, so a retrain queued from the command line (``python -m training retrain --wait``,
the cron path without HTTP) is done with no other setup; the worker ends with the api."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from service.db import migrate
from tests.conftest import AIR_CSV, MODELS, REPO, start_api_process, store_series

pytestmark = pytest.mark.slow


def children(pid: int) -> dict[int, str]:
    """A process's children (Linux /proc): pid -> command line."""
    kids = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            kids[int(child)] = cmdline.decode()
    return kids


def test_serve_runs_a_worker_that_does_a_queued_retrain_and_ends_with_the_api(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    migrate.upgrade(url)
    env = {
        "DATABASE_URL": url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "FORECAST_MODELS_DIR": str(MODELS),
        "FORECAST_EMBEDDED_WORKER": "true",
        "FORECAST_WORKER_POLL_S": "0.3",
        "FORECAST_ADMIN_TOKEN": "",  # blank is unset: the api generates one
    }
    api, base = start_api_process(env, tmp_path)
    try:
        workers = [pid for pid, cmd in children(api.pid).items() if "training worker" in cmd]
        assert len(workers) == 1, children(api.pid)
        token = (tmp_path / "var" / "admin_token").read_text().strip()  # generated
        store_series(base, "air", pd.read_csv(AIR_CSV), token=token)
        done = subprocess.run(
            [sys.executable, "-m", "training", "retrain", "--model", "air_passengers",
             "--promote", "never", "--max-epochs", "2", "--wait", "--timeout-s", "240"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), **env},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout.strip().splitlines()[-1])
        assert job["status"] == "succeeded" and job["decision"] == "not_promoted", job
        assert job["candidate"]["mase"] > 0 and job["champion"]["source"].startswith("folder:")
        auth = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{base}/retrain", headers=auth).json()["items"]
        assert [j["id"] for j in listed] == [job["id"]]
    finally:
        api.terminate()
        api.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{workers[0]}").exists(), "the worker outlived the api"
