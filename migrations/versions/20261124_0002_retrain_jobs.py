"""retrain_jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "retrain_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("total_epochs", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=4000), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("model_version", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_jobs")),
    )
    # One queued or running job per model: the database refuses a second one.
    op.create_index(
        "uq_retrain_jobs_active_model",
        "retrain_jobs",
        ["model_name"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(
        "ix_retrain_jobs_status_created_at", "retrain_jobs", ["status", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_retrain_jobs_status_created_at", table_name="retrain_jobs")
    op.drop_index("uq_retrain_jobs_active_model", table_name="retrain_jobs")
    op.drop_table("retrain_jobs")
