"""Tables (SQLAlchemy 2.0). Schema changes go through Alembic migrations in migrations/."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to (and drop) them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SERIES_ID_MAX = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[str] = mapped_column(String(SERIES_ID_MAX), primary_key=True)
    frequency: Mapped[str] = mapped_column(String(32))  # pandas offset alias: MS, QS, D, h...
    description: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Observation(Base):
    """One value per (series, timestamp). Timestamps are stored naive, as the client's wall time
    (aware inputs are converted to UTC first)."""

    __tablename__ = "observations"

    series_id: Mapped[str] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True
    )
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True)
    value: Mapped[float] = mapped_column(Float(precision=53))


class ForecastLog(Base):
    """Every forecast served for a stored series, so accuracy can be scored once actuals arrive."""

    __tablename__ = "forecasts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    series_id: Mapped[str] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    horizon: Mapped[int] = mapped_column(Integer)
    target_ts: Mapped[list[str]] = mapped_column(JSON)  # ISO timestamps, one per step
    values: Mapped[list[float]] = mapped_column(JSON)


ACTIVE_STATUSES = ("queued", "running")
# At most one queued or running job per model, enforced by the database itself (a partial
# unique index on both dialects), so two concurrent POST /retrain can't both insert one.
ACTIVE_JOB_PREDICATE = text("status IN ('queued', 'running')")


class RetrainJob(Base):
    """A retrain request and its life: queued -> running -> succeeded | rejected | failed.

    A running job holds a lease that its worker renews with heartbeats; a job whose lease
    expired is requeued (up to a retry limit) by the next worker that looks for work."""

    __tablename__ = "retrain_jobs"
    __table_args__ = (
        Index(
            "uq_retrain_jobs_active_model",
            "model_name",
            unique=True,
            postgresql_where=ACTIVE_JOB_PREDICATE,
            sqlite_where=ACTIVE_JOB_PREDICATE,
        ),
        Index("ix_retrain_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    epoch: Mapped[int | None] = mapped_column(Integer)
    total_epochs: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(4000))
    # Candidate and champion backtest metrics, the decision and its reason.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(100))
