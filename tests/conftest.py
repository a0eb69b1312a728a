"""Shared fixtures: paths, settings, and the api served by a real uvicorn on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from service.db import migrate

REPO = Path(__file__).resolve().parents[1]
AIR_CSV = REPO / "data" / "air_passengers.csv"
MODELS = REPO / "models"
AIR_BUNDLE = MODELS / "air_passengers"
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ_TOKEN = "test-read-token"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


# An admin connection that may create and drop databases (this machine: trust auth).
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DATABASES = ["sqlite", "postgresql"]


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A new, empty database of the given kind, dropped afterwards. Yields its URL."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'test-{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"forecast_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise RuntimeError(
            f"PostgreSQL at {POSTGRES_ADMIN_URL} is needed for the tests and refused: {exc}. "
            "Start it with: pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start"
        ) from exc
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), in MB: the benchmarks' and tests' memory figure."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_migrated_api(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``python -m service migrate`` with ``env`` (the database in it), then
    ``start_api_process``: how the benchmarks bring an api up."""
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return start_api_process(env, REPO)


def start_api_process(
    env: dict[str, str], cwd: Path, capture: bool = False, timeout_s: float = 60
) -> tuple[subprocess.Popen[str], str]:
    """``python -m service serve`` as its own process on a free port, once it is ready.

    Returns the process (stdout+stderr piped when ``capture``) and its base URL.
    """
    port = free_port()
    # No registry polling and no embedded worker unless a test asks for them; the tests'
    # tokens unless a test sets its own (a blank FORECAST_ADMIN_TOKEN: generated into a file).
    quiet = {
        "FORECAST_REGISTRY_POLL_S": "0",
        "FORECAST_EMBEDDED_WORKER": "false",
        "FORECAST_ADMIN_TOKEN": ADMIN_TOKEN,
        "FORECAST_READ_TOKEN": READ_TOKEN,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **quiet, **env},
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health/ready").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    output = proc.communicate()[0] if capture else ""
    raise RuntimeError(f"the api did not become ready within {timeout_s} s\n{output}")


def store_series(
    base: str,
    series_id: str,
    frame: pd.DataFrame,
    frequency: str = "MS",
    token: str = ADMIN_TOKEN,
) -> None:
    """Create a series over HTTP and upload ``frame``'s ds and y as its observations (CSV)."""
    auth = {"Authorization": f"Bearer {token}"}
    httpx.put(
        f"{base}/series/{series_id}", json={"frequency": frequency}, headers=auth
    ).raise_for_status()
    rows = frame[["ds", "y"]].rename(columns={"ds": "ts", "y": "value"})
    httpx.post(
        f"{base}/series/{series_id}/observations",
        content=rows.to_csv(index=False),
        headers={**auth, "content-type": "text/csv"},
    ).raise_for_status()


@contextmanager
def serve(settings: Settings, headers: dict[str, str] = ADMIN) -> Iterator[httpx.Client]:
    """Run create_app(settings) under uvicorn in a thread; yield an HTTP client for it that
    sends ``headers`` (the admin token) with every request."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def air_history() -> list[float]:
    return pd.read_csv(AIR_CSV)["y"].astype(float).tolist()


@pytest.fixture(scope="session", params=DATABASES)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """This run's own database of each kind, migrated to head: every api test runs on both."""
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def clean_tables(database_url: str) -> Iterator[None]:
    """Tests share the run's database; each leaves it empty for the next."""
    yield
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for table in ("forecasts", "observations", "series", "retrain_jobs"):
            connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    # Every shipped bundle is loaded; AirPassengers serves monthly series in these tests.
    return Settings(
        models_dir=MODELS,
        default_models={"MS": "air_passengers"},
        provider="auto",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        read_token=READ_TOKEN,
        registry_poll_s=0,
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(settings) as c:
        yield c


@pytest.fixture
def make_client() -> Callable[[Settings], object]:
    """For tests that need an app with their own settings (closed at teardown)."""
    stack: list[object] = []

    def factory(custom: Settings) -> httpx.Client:
        cm = serve(custom)
        stack.append(cm)
        return cm.__enter__()

    yield factory
    for cm in reversed(stack):
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]
