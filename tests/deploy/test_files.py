"""The Dockerfile and docker-compose.yml, checked without a Docker engine: hadolint, compose's
own validation, what the api image installs, and the shutdown timings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from tests.conftest import REPO
from tests.deploy.conftest import SECRETS, compose

DOCKERFILE = (REPO / "Dockerfile").read_text()


def stage(name: str) -> str:
    """The instructions of one build stage (FROM ... AS name up to the next FROM), without
    comments."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match is not None, f"no stage {name}"
    return "\n".join(line for line in match.group(1).splitlines() if not line.startswith("#"))


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    done = subprocess.run(
        [hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_accepts_the_file_and_the_gpu_override():
    assert compose("config", "--quiet", env=SECRETS).returncode == 0
    done = compose("-f", str(REPO / "docker-compose.gpu.yml"), "config", env=SECRETS)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime-gpu" in done.stdout and "capabilities" in done.stdout


def test_compose_refuses_to_start_without_each_secret():
    for name in SECRETS:
        done = compose("config", "--quiet", env={k: v for k, v in SECRETS.items() if k != name})
        assert done.returncode != 0 and f"set {name}" in done.stderr, (name, done.stderr)
    example = (REPO / ".env.example").read_text()
    assert all(re.search(rf"^{name}=", example, re.M) for name in SECRETS)


def test_the_api_image_installs_no_torch(tmp_path):
    """The api stages install the serve extra alone, and pip's resolver says what that is."""
    api_stages = stage("api-deps") + stage("api")
    assert "'.[serve]'" in api_stages
    assert "torch" not in api_stages and "[train]" not in api_stages
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "--constraint", "constraints.txt", ".[serve]"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "fastapi", "mlflow-skinny", "psycopg"} <= names
    assert not {n for n in names if n.startswith(("torch", "nvidia-", "triton"))}


def test_the_worker_image_pins_the_torch_of_constraints_txt():
    pinned = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned is not None
    assert f"torch=={pinned.group(1)}" in stage("worker-deps")
    assert "download.pytorch.org/whl/cpu" in stage("worker-deps")


def test_every_image_runs_unprivileged_with_an_exec_form_command():
    for name in ("api", "worker", "mlflow"):
        text = stage(name)
        assert re.search(r"^USER 10001$", text, re.M), name
        assert re.search(r'^CMD \["', text, re.M), name  # exec form: SIGTERM reaches it


def test_graceful_timeouts_fit_inside_the_grace_periods(compose_config):
    api = compose_config["services"]["api"]
    assert float(api["environment"]["FORECAST_GRACEFUL_SHUTDOWN_S"]) < seconds(
        api["stop_grace_period"]
    )
    assert seconds(compose_config["services"]["worker"]["stop_grace_period"]) >= 60
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", duration).groups()  # type: ignore[union-attr]
    return float(value) * (60 if unit == "m" else 1)
