"""The compose topology without Docker: every service of docker-compose.yml, as
``docker-compose config`` resolves it, started as a local process with the same command and
environment. Only what a container would provide is mapped:
- host names: db -> this machine's PostgreSQL (fresh databases), mlflow and api -> loopback
  ports;
- container paths: /app/models -> the repo's models/, /mlartifacts -> a temporary folder;
- the db image's own setup: the local server stands in, with the mlflow database created here.

Then it walks the user's path: migrate, api ready, ingest a series, forecast, a retrain
started by the scheduler's call, and the promoted model served by the api.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import AIR_CSV, MODELS, REPO, free_port, fresh_database, store_series
from tests.deploy.conftest import SECRETS, resolved_compose

pytestmark = pytest.mark.slow

MODEL = "air_passengers"
# The operator's .env for this run: a retrain of the AirPassengers model every 3 seconds,
# short and always promoted, so the walk takes a minute rather than a week.
ENV = {
    **SECRETS,
    "FORECAST_SCHEDULE_BODY": json.dumps(
        {"model": MODEL, "promote": "always", "overrides": {"max_epochs": 3}}
    ),
    "FORECAST_SCHEDULE_CRON": "*/3 * * * * *",
    "FORECAST_READ_TOKEN": "compose-read-token",
    "FORECAST_REGISTRY_POLL_S": "1",
}


class Topology:
    """Maps container names, ports and paths of the resolved compose file to local ones."""

    def __init__(self, databases: dict[str, str], work: Path) -> None:
        self.databases = databases  # compose database name -> local URL
        self.work = work
        self.ports = {"mlflow": free_port(), "api": free_port()}

    def url(self, value: str) -> str:
        if value.startswith("postgresql"):
            return self.databases[make_url(value).database or ""]
        for name, port in self.ports.items():
            value = value.replace(f"http://{name}:", f"http://127.0.0.1:{port}#").split("#")[0]
        return value

    def path(self, value: str) -> str:
        value = value.replace("/app/models", str(MODELS))
        return value.replace("/mlartifacts", str(self.work / "mlartifacts"))

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        env = {k: self.path(self.url(str(v))) for k, v in service.get("environment", {}).items()}
        return {**os.environ, "PYTHONPATH": str(REPO), **env}

    def command(self, name: str, service: dict[str, Any]) -> list[str]:
        """The service's command with local ports, loopback and this Python."""
        args = [self.path(self.url(str(a))) for a in service["command"]]
        for flag, value in (("--port", str(self.ports.get(name, ""))), ("--host", "127.0.0.1")):
            if flag in args:
                args[args.index(flag) + 1] = value
        if args[0] == "python":
            return [sys.executable, *args[1:]]
        if args[0] == "mlflow":
            return [sys.executable, "-m", "mlflow", *args[1:]]
        raise AssertionError(f"{name}: unexpected command {args}")

    def healthcheck(self, name: str, service: dict[str, Any]) -> list[str]:
        """The compose healthcheck of a service, pointed at its local port."""
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", test
        code = test[3].replace("127.0.0.1:8000", f"127.0.0.1:{self.ports['api']}")
        code = code.replace("127.0.0.1:5000", f"127.0.0.1:{self.ports['mlflow']}")
        return [sys.executable, test[2], code]


@contextmanager
def started(
    name: str, topology: Topology, service: dict[str, Any]
) -> Iterator[subprocess.Popen[str]]:
    log = (topology.work / f"{name}.log").open("w")
    cwd = topology.work / name
    cwd.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        topology.command(name, service),
        cwd=cwd,
        env=topology.environment(service),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_healthy(name: str, topology: Topology, service: dict[str, Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check = subprocess.run(topology.healthcheck(name, service), capture_output=True)
        if check.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} never healthy:\n{(topology.work / f'{name}.log').read_text()}")


def wait_for(what: str, condition, topology: Topology, timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in topology.work.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def test_the_compose_services_run_the_users_path_as_local_processes(tmp_path):
    config = resolved_compose(ENV)
    services = config["services"]
    assert set(services) == {"db", "mlflow", "migrate", "api", "worker", "scheduler"}
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    with ExitStack() as stack:
        databases = {
            name: stack.enter_context(fresh_database("postgresql", tmp_path))
            for name in ("forecast", "mlflow")  # mlflow: what the db's init script creates
        }
        topology = Topology(databases, tmp_path)

        mlflow = stack.enter_context(started("mlflow", topology, services["mlflow"]))
        wait_healthy("mlflow", topology, services["mlflow"], timeout_s=120)
        migrate = subprocess.run(
            topology.command("migrate", services["migrate"]),
            cwd=tmp_path,
            env=topology.environment(services["migrate"]),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        api = stack.enter_context(started("api", topology, services["api"]))
        wait_healthy("api", topology, services["api"], timeout_s=120)
        worker = stack.enter_context(started("worker", topology, services["worker"]))
        base = f"http://127.0.0.1:{topology.ports['api']}"

        # Ingest a series and forecast it: the folder bundle answers.
        # The admin token writes; clients read and forecast with the read token.
        store_series(base, "air", pd.read_csv(AIR_CSV), token=ENV["FORECAST_ADMIN_TOKEN"])
        auth = {"Authorization": f"Bearer {ENV['FORECAST_READ_TOKEN']}"}
        ask = {"series": [{"id": "air"}], "horizon": 12, "model": MODEL}

        def served_model() -> dict[str, str]:
            answer = httpx.post(f"{base}/forecast", json=ask, headers=auth).json()
            return answer["forecasts"][0]["model"]

        before = served_model()
        source = httpx.get(f"{base}/models/{MODEL}", headers=auth).json()["source"]
        assert source.startswith("folder:")

        # The scheduler's call starts a retrain; the worker promotes; the api swaps.
        with started("scheduler", topology, services["scheduler"]):
            job = wait_for(
                "the scheduled retrain to finish",
                lambda: next(
                    (
                        j
                        for j in httpx.get(f"{base}/retrain", headers=auth).json()["items"]
                        if j["status"] not in ("queued", "running")
                    ),
                    None,
                ),
                topology,
            )
        assert job["status"] == "succeeded" and job["decision"] == "promoted", job
        registry = f"registry:models:/{MODEL}/{job['model_version']}"
        wait_for(
            "the api to serve the promoted version",
            lambda: httpx.get(f"{base}/models/{MODEL}", headers=auth).json()["source"] == registry,
            topology,
            timeout_s=60,
        )
        after = served_model()
        assert after == {"name": MODEL, "version": job["model_version"]} != before
        assert any((tmp_path / "mlartifacts").rglob("model.onnx"))  # stored by the server

        # SIGTERM: each process shuts down cleanly within its compose grace period. (uvicorn
        # re-raises the signal once it has shut down, so its exit status says SIGTERM.)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        for name, proc in (("api", api), ("mlflow", mlflow)):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
            assert "Application shutdown complete" in (tmp_path / f"{name}.log").read_text()
