"""The forecast log, written in batches off the request path.

Every forecast served for a stored series is recorded (``forecasts`` table) so its accuracy
can be scored once the actuals arrive. One INSERT and commit per request would put a WAL
flush on every forecast's path; instead the rows collect in memory and a background task
writes them every ``flush_s`` in one transaction. The log is the service's own record, not
data a client handed over: a crash (kill -9) loses at most the last ``flush_s`` of records;
a graceful stop writes them all. While the database is down the rows wait, up to
``max_pending``; beyond that the oldest are dropped, logged and counted.

A forecast the same as the last one logged for its series (its data and model unchanged) is
not written again: see ``repository.record_forecasts``. At 14 requests a second for the same
1,000 stored series, writing every answer was 14,000 rows a second, and its CPU (about 3.5 ms
in this process and 8-13 ms in PostgreSQL's per 1,000 rows) slowed the requests it overlapped
on a 2-core machine: the 1,000-series requests' p99 was 120-127 ms with every row written,
80-89 ms with repeats skipped, and 79-86 ms with no log written at all (one run of each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

import psycopg
from cachetools import LRUCache
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.db import repository

logger = logging.getLogger(__name__)

# What a write can fail with that may pass later (connection lost, server down, a lock or
# statement timeout): SQLAlchemy's, and psycopg's own, since on PostgreSQL the log's check
# and COPY go to psycopg directly and SQLAlchemy does not wrap those errors.
TRANSIENT = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


class ForecastRecorder:
    CHUNK_ROWS = 5000  # rows per transaction (and series ids per query, well under 65,535)
    # Series whose last logged forecast is remembered, those written most recently: one
    # forgotten is at worst logged again. About 190 bytes each with a 12-character id.
    REMEMBERED_SERIES = 100_000

    def __init__(
        self,
        sessions: sessionmaker[Session],
        flush_s: float,
        max_pending: int,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.on_drop = on_drop
        self.rows: deque[dict[str, object]] = deque()
        # Series id -> digest of its last logged forecast; only the writer thread touches it.
        self.logged: LRUCache[str, int] = LRUCache(self.REMEMBERED_SERIES)
        self.task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def add(self, rows: list[dict[str, object]]) -> None:
        self.rows.extend(rows)
        self._drop_beyond_max()

    def _drop_beyond_max(self) -> None:
        excess = len(self.rows) - self.max_pending
        if excess > 0:
            for _ in range(excess):
                self.rows.popleft()
            logger.error(
                "dropped the %d oldest forecast log rows: %d are waiting for the database "
                "(FORECAST_FORECAST_LOG_MAX_PENDING)",
                excess,
                self.max_pending,
            )
            if self.on_drop is not None:
                self.on_drop(excess)

    def start(self) -> None:
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is left (the api is shutting down). The timer is stopped between
        flushes, never during one, so no write is abandoned half way."""
        if self.task is not None:
            self.stopping.set()
            await self.task
        await self.flush()
        if self.rows:
            logger.error(
                "%d forecast log rows were not written before shutdown: the database did not "
                "take them",
                len(self.rows),
            )

    async def _run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the waiting rows in chunks, one transaction each. A chunk the database can't
        take now (connection lost, server down) waits for the next flush; one it refuses
        outright (a bug, bad data) is dropped, logged and counted, so it can't block the rest
        for ever."""
        waiting = len(self.rows)  # rows that arrive meanwhile wait for the next flush
        while waiting > 0 and self.rows:
            chunk = [self.rows.popleft() for _ in range(min(self.CHUNK_ROWS, waiting))]
            waiting -= len(chunk)
            try:
                await asyncio.to_thread(self._write, chunk)
            except TRANSIENT as exc:
                logger.warning(
                    "could not write %d forecast log rows, will retry: %s", len(chunk), exc
                )
                self.rows.extendleft(reversed(chunk))
                self._drop_beyond_max()
                return
            except Exception:
                logger.exception("dropped %d forecast log rows the database refused", len(chunk))
                if self.on_drop is not None:
                    self.on_drop(len(chunk))

    def _write(self, rows: list[dict[str, object]]) -> None:
        with self.sessions() as session:
            repository.record_forecasts(session, rows=rows, logged=self.logged)
