"""docker-compose.yml as ``docker-compose config`` resolves it. The Debian package
docker-compose is needed: it validates and interpolates the file without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

# What an operator puts in .env (see .env.example).
SECRETS = {
    "POSTGRES_PASSWORD": "compose-test-password",
    "FORECAST_ADMIN_TOKEN": "compose-test-token",
    "FORECAST_SCHEDULE_BODY": '{"model": "m3_monthly"}',
}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        raise RuntimeError(
            "docker-compose is needed (Debian: apt-get install docker-compose); "
            "`make test` installs it when run as root"
        )
    # Only the variables given: a developer's own .env or shell must not change the answer.
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO,
        env={**clean, "COMPOSE_PROJECT_NAME": "forecast", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved_compose(env: dict[str, str]) -> dict[str, Any]:
    done = compose("config", env=env)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="session")
def compose_config() -> dict[str, Any]:
    return resolved_compose(SECRETS)
