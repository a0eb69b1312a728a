"""The api never imports torch: checked in a fresh interpreter after start-up, a registry check
(MLflow's client is imported) and a forecast."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import AIR_BUNDLE, AIR_CSV, REPO

SCRIPT = f"""
import json, sys
import pandas as pd
from fastapi.testclient import TestClient
from service.app import create_app
from service.config import Settings

history = pd.read_csv({str(AIR_CSV)!r})["y"].tolist()
settings = Settings(
    models_dir={str(AIR_BUNDLE.parent)!r},
    database_url=sys.argv[1],
    mlflow_tracking_uri=f"sqlite:///{{sys.argv[2]}}/mlflow.db",
    read_token="no-torch-read-token",
    admin_token_file=f"{{sys.argv[2]}}/admin_token",
    registry_poll_s=60,
)
auth = {{"Authorization": "Bearer no-torch-read-token"}}
with TestClient(create_app(settings), headers=auth) as client:
    assert client.get("/health/ready").status_code == 200
    r = client.post("/forecast", json={{"series": [{{"id": "a", "history": history,
                    "start": "1949-01-01", "freq": "MS"}}], "horizon": 12}})
    assert r.status_code == 200, r.text
assert "mlflow" in sys.modules  # the registry was checked at start-up
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
"""


def test_service_process_never_imports_torch(database_url, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, database_url, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
