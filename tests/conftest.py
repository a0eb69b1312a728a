"""Shared fixtures: paths, settings, and the api served by a real uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn

from service.app import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
AIR_CSV = REPO / "data" / "air_passengers.csv"
AIR_BUNDLE = REPO / "models" / "air_passengers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(settings: Settings) -> Iterator[httpx.Client]:
    """Run create_app(settings) under uvicorn in a thread; yield an HTTP client for it."""
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
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def air_history() -> list[float]:
    return pd.read_csv(AIR_CSV)["y"].astype(float).tolist()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(bundle_dir=AIR_BUNDLE, provider="auto")


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
