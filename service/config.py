"""One settings object for the api, read from environment variables.

Tests build their own ``Settings(...)`` and pass it to ``create_app``; nothing reads the
environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["auto", "cpu", "cuda"]
DEFAULT_DATABASE_URL = "sqlite:///var/service.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORECAST_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "FORECAST_DATABASE_URL"),
        description="SQLAlchemy URL: unset, a SQLite file under var/; for PostgreSQL "
        "postgresql+psycopg://user:password@host:5432/dbname.",
    )
    models_dir: Path = Field(
        default=Path("models"),
        description="Folder of model bundles (one sub-folder each: model.onnx + manifest.json); "
        "the api loads them all and routes each series by its frequency.",
    )
    default_models: dict[str, str] = Field(
        default={"MS": "m3_monthly", "QS": "m3_quarterly"},
        description="Which model serves a frequency when several do (JSON: alias -> name); "
        "a missing name falls back to the first model by name.",
    )
    provider: Provider = Field(
        default="auto",
        description="onnxruntime execution provider: auto picks CUDA when available, else CPU.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        description="onnxruntime threads per inference (0 = one per core). Keep "
        "workers x threads <= cores when several uvicorn workers run.",
    )
    inline_batch_max: int = Field(
        default=16,
        ge=0,
        description="Requests of up to this many series are planned and answered on the event "
        "loop (microseconds); larger ones in a worker thread so they never block it. Models "
        "always run in the inference threads.",
    )
    inference_threads: int = Field(
        default=2,
        ge=1,
        description="Threads that run model inferences, each session call with "
        "FORECAST_INTRA_OP_THREADS threads. Small requests share one batch at a time; a large "
        "request is split over all of them. Keep workers x inference threads x intra-op "
        "threads <= cores.",
    )
    batch_max_rows: int = Field(
        default=256,
        ge=1,
        description="Concurrent requests are batched into one session call up to this many "
        "series; a request of more (on the CPU, of more than one 32-row chunk) is split over "
        "the inference threads instead.",
    )
    series_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Stored series whose latest window the api keeps in memory (PostgreSQL "
        "only: changes reach every api process by LISTEN/NOTIFY); 0 turns the cache off.",
    )
    forecast_log_flush_s: float = Field(
        default=0.25,
        gt=0,
        description="The forecast log (forecasts served for stored series) is written in "
        "batches this often; a crash loses at most this much of it.",
    )
    forecast_log_max_pending: int = Field(
        default=100_000,
        ge=1,
        description="Forecast log rows kept while the database is unreachable; beyond this "
        "the oldest are dropped (logged and counted).",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="413 above.")
    max_series_per_request: int = Field(default=1000, ge=1)
    max_history_length: int = Field(default=100_000, ge=1)
    max_observations_per_request: int = Field(default=100_000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    max_json_depth: int = Field(
        default=32,
        ge=4,
        le=1000,
        description="422 for a JSON body nested deeper than this, checked before it is parsed.",
    )
    log_level: str = Field(default="INFO")
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="Logs on stderr: one JSON object per line (with request_id), or text.",
    )
    access_log: Literal["all", "errors", "off"] = Field(
        default="errors",
        description="Access log records (method, path, route, status, duration_ms, "
        "request_id): for every request, for 4xx and 5xx answers only, or for 5xx only. "
        "Counts and latencies of every request are in /metrics either way.",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry traces and metrics, sent to the providers "
        "an OpenTelemetry SDK set up (e.g. opentelemetry-instrument). Off: its check for a "
        "configured provider costs about 4% of /forecast throughput.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin scope: every route, including ingest, delete "
        "and retrain. Unset: the api generates one at first start and stores it in "
        "FORECAST_ADMIN_TOKEN_FILE.",
    )
    read_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the read scope: forecasts, and reads of series, models "
        "and retrain jobs. Unset: those routes take the admin token only.",
    )
    admin_token_file: Path = Field(
        default=Path("var/admin_token"),
        description="Where the generated admin token is kept (mode 0600) when "
        "FORECAST_ADMIN_TOKEN is unset.",
    )
    metrics: Literal["open", "read", "admin", "off"] = Field(
        default="open",
        description="/metrics: open to all (Prometheus scrapes it without a token), behind "
        "the read or the admin scope, or not served.",
    )
    cors_origins: list[str] = Field(
        default=[],
        description="Origins allowed to call the api from a browser, as a JSON list (e.g. "
        '["https://dash.example.com"]). Empty: no CORS headers, browsers refuse.',
    )
    mlflow_tracking_uri: str = Field(
        default="sqlite:///var/mlflow.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "FORECAST_MLFLOW_TRACKING_URI"),
        description="MLflow tracking store and model registry: training logs and registers "
        "there; the api follows each model's champion alias there.",
    )
    registry_poll_s: float = Field(
        default=10.0,
        ge=0,
        description="How often the api checks the registry's champion aliases (0: never).",
    )
    registry_cache_dir: Path = Field(
        default=Path("var/registry"),
        description="Where the api keeps bundles downloaded from the registry.",
    )
    embedded_worker: bool = Field(
        default=True,
        description="python -m service serve also runs one retrain worker as a child process "
        "(set false where workers run on their own, as in docker-compose).",
    )
    retrain_lease_s: float = Field(
        default=120.0,
        gt=0,
        description="A running retrain job whose worker sent no heartbeat for this long is "
        "requeued (or failed after FORECAST_RETRAIN_MAX_ATTEMPTS).",
    )
    retrain_heartbeat_s: float = Field(
        default=10.0, gt=0, description="How often a worker renews its job's lease."
    )
    retrain_max_attempts: int = Field(
        default=3, ge=1, description="Times a job may be started before it is failed."
    )
    worker_poll_s: float = Field(
        default=2.0, gt=0, description="How often an idle worker looks for queued jobs."
    )
    graceful_shutdown_s: float = Field(
        default=20.0,
        gt=0,
        description="On SIGTERM uvicorn lets requests in flight finish for this long; keep it "
        "below the orchestrator's grace period (compose: stop_grace_period).",
    )
    schedule_cron: str = Field(
        default="",
        description="python -m service schedule: when to call POST /retrain (cron, UTC; five "
        "fields, or six with seconds first).",
    )
    schedule_api_url: str = Field(
        default="http://127.0.0.1:8000", description="The api the scheduler calls."
    )
    schedule_body: str = Field(
        default="{}", description='The JSON body it posts, e.g. {"model": "m3_monthly"}.'
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.retrain_heartbeat_s >= self.retrain_lease_s:
            raise ValueError(
                f"FORECAST_RETRAIN_HEARTBEAT_S ({self.retrain_heartbeat_s}) must be below "
                f"FORECAST_RETRAIN_LEASE_S ({self.retrain_lease_s}), or every lease expires"
            )
        return self
