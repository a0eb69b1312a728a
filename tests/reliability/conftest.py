"""Fixtures for the fault tests: an api process of its own, and a PostgreSQL server of its own
that a test may stop and start without touching the one every other test uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODELS, free_port

POSTGRES_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder, on its own port. initdb refuses to run as
    root: as root, the server runs as the ``postgres`` user."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def bin(self) -> Path:
        if not POSTGRES_BINS:
            raise RuntimeError("PostgreSQL's server programs are needed (/usr/lib/postgresql)")
        return POSTGRES_BINS[-1]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        data = self.folder / "data"
        self.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        # fast: every connection is closed at once, as when the server goes down for real.
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    folder = Path(tempfile.mkdtemp(prefix="forecast-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(folder)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def api_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "FORECAST_MODELS_DIR": str(MODELS),
        "FORECAST_LOG_LEVEL": "WARNING",
        **extra,
    }


@dataclass
class Load:
    """Clients in threads calling ``request`` without pause; every outcome is kept as
    (start, end, status), status 0 for a transport error."""

    request: Callable[[httpx.Client], httpx.Response]
    base: str
    headers: dict[str, str]
    clients: int = 4
    timeout_s: float = 30
    outcomes: list[tuple[float, float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (start, transport error)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.loop) for _ in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout_s + 5)

    def loop(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=self.timeout_s) as c:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    status = self.request(c).status_code
                except httpx.TransportError as exc:
                    status = 0
                    self.errors.append((start, repr(exc)))
                    time.sleep(0.01)
                self.outcomes.append((start, time.monotonic(), status))
