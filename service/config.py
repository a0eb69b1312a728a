"""One settings object for the api, read from environment variables.

Tests build their own ``Settings(...)`` and pass it to ``create_app``; nothing reads the
environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
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
        description="Batches up to this many series run on the event loop (sub-millisecond); "
        "larger ones run in a worker thread so they never block it.",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="413 above.")
    max_series_per_request: int = Field(default=1000, ge=1)
    max_history_length: int = Field(default=100_000, ge=1)
    max_observations_per_request: int = Field(default=100_000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    log_level: str = Field(default="INFO")
