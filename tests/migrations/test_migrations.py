"""`alembic upgrade head` / `downgrade base` on fresh SQLite and PostgreSQL databases, through
the real CLI, and the models agree with the migrated schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.db.tables import Base
from tests.conftest import DATABASES, REPO, fresh_database

TABLES = {"series", "observations", "forecasts", "retrain_jobs"}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def cli(*args: str, url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", DATABASES)
def test_alembic_upgrade_and_downgrade_both_work(kind, tmp_path):
    with fresh_database(kind, tmp_path) as url:
        cli("-m", "alembic", "upgrade", "head", url=url)
        assert tables(url) >= TABLES
        engine = create_engine(url)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        engine.dispose()
        assert diff == [], f"models and migrations disagree: {diff}"
        cli("-m", "alembic", "downgrade", "base", url=url)
        assert tables(url) & TABLES == set()
        cli("-m", "service", "migrate", url=url)  # the command `make serve` runs
        assert tables(url) >= TABLES


@pytest.mark.parametrize("kind", DATABASES)
def test_migrating_twice_is_a_no_op(kind, tmp_path):
    with fresh_database(kind, tmp_path) as url:
        cli("-m", "service", "migrate", url=url)
        cli("-m", "service", "migrate", url=url)
        assert tables(url) >= TABLES
