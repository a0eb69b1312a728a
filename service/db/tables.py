"""Tables (SQLAlchemy 2.0). Schema changes go through Alembic migrations in migrations/."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    func,
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
