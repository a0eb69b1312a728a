"""All SQL the api runs. Functions take the session keyword-first; writes commit here, so a
caller that gets a result back knows the data is durable."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np
import orjson
import psycopg
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from service.db.tables import ForecastLog, Observation, Series
from service.errors import SeriesNotFound
from service.timeindex import same_frequency, window_index


@dataclass(frozen=True)
class SeriesStats:
    series: Series
    count: int
    first_ts: datetime | None
    last_ts: datetime | None


@dataclass(frozen=True)
class StoredWindow:
    """The latest observations of one stored series, oldest first. The values are an array:
    a batch's model input is then one copy of each window (lists of floats took seven times
    as long to convert), and a cached window's values take under a third of a list's memory."""

    series_id: str
    frequency: str
    created_at: datetime  # which series of this id: one deleted and created again is another
    ts: list[datetime]
    values: np.ndarray  # (n,) float64

    @cached_property
    def consecutive(self) -> int:
        """How many of the latest observations lie on consecutive periods of the frequency,
        with none missing between them (all of them, unless there is a gap). Worked out once
        per window, which the window cache serves request after request: a model may read
        the last ``consecutive`` values and no more."""
        if not self.ts:
            return 0
        expected = window_index(self.ts[-1], len(self.ts), self.frequency)
        count = 0
        for have, want in zip(reversed(self.ts), reversed(expected), strict=True):
            if have != want:
                break
            count += 1
        return count


def get_series(session: Session, *, series_id: str, for_update: bool = False) -> Series:
    query = select(Series).where(Series.id == series_id)
    if for_update:  # serialises writers of one series (PostgreSQL; SQLite locks the file)
        query = query.with_for_update()
    series = session.scalars(query).one_or_none()
    if series is None:
        raise SeriesNotFound(series_id)
    return series


def notify_series_changed(session: Session, *, series_id: str) -> None:
    """On PostgreSQL, tell every api process (LISTEN forecast_series_changed) that this
    series changed, so they drop its cached window. Sent with the transaction's commit, and
    not at all if it rolls back."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify('forecast_series_changed', :id)"), {"id": series_id})


def has_observations(session: Session, *, series_id: str) -> bool:
    query = select(Observation.ts).where(Observation.series_id == series_id).limit(1)
    return session.scalars(query).first() is not None


def put_series(
    session: Session, *, series_id: str, frequency: str, description: str | None
) -> tuple[Series, bool]:
    """Create or update; returns the series and whether it was created."""
    now = datetime.now(UTC)
    series = session.get(Series, series_id, with_for_update=True)
    created = series is None
    if series is None:
        series = Series(id=series_id, created_at=now)
        session.add(series)
    series.frequency, series.description, series.updated_at = frequency, description, now
    notify_series_changed(session, series_id=series_id)
    session.commit()
    return series, created


def series_stats(session: Session, *, series_id: str) -> SeriesStats:
    series = get_series(session, series_id=series_id)
    count, first, last = session.execute(
        select(func.count(), func.min(Observation.ts), func.max(Observation.ts)).where(
            Observation.series_id == series_id
        )
    ).one()
    return SeriesStats(series=series, count=int(count), first_ts=first, last_ts=last)


def list_series(session: Session, *, limit: int, after: str | None) -> list[Series]:
    """A page ordered by id; ``after`` is the last id of the previous page (keyset paging)."""
    query = select(Series).order_by(Series.id).limit(limit)
    if after is not None:
        query = query.where(Series.id > after)
    return list(session.scalars(query))


def delete_series(session: Session, *, series_id: str) -> None:
    get_series(session, series_id=series_id, for_update=True)
    # Explicit rather than relying on ON DELETE CASCADE, which SQLite honours only when asked.
    session.execute(delete(ForecastLog).where(ForecastLog.series_id == series_id))
    session.execute(delete(Observation).where(Observation.series_id == series_id))
    session.execute(delete(Series).where(Series.id == series_id))
    notify_series_changed(session, series_id=series_id)
    session.commit()


def upsert_observations(
    session: Session, *, series_id: str, ts: Sequence[datetime], values: Sequence[float]
) -> tuple[int, int]:
    """Insert or replace values by timestamp, all or nothing; returns (inserted, updated).

    The series row is locked first, so concurrent uploads to one series can't interleave and
    the counts are exact. Committed before returning.
    """
    get_series(session, series_id=series_id, for_update=True)
    if session.get_bind().dialect.name == "postgresql":
        updated = _copy_upsert_postgresql(session, series_id, ts, values)
    else:
        updated = _upsert_portable(session, series_id, ts, values)
    session.execute(
        update(Series).where(Series.id == series_id).values(updated_at=datetime.now(UTC))
    )
    notify_series_changed(session, series_id=series_id)
    session.commit()
    return len(ts) - updated, updated


def _upsert_portable(
    session: Session, series_id: str, ts: Sequence[datetime], values: Sequence[float]
) -> int:
    existing = set(
        session.scalars(
            select(Observation.ts).where(
                Observation.series_id == series_id,
                Observation.ts >= min(ts),
                Observation.ts <= max(ts),
            )
        )
    )
    statement = sqlite.insert(Observation)
    statement = statement.on_conflict_do_update(
        index_elements=[Observation.series_id, Observation.ts],
        set_={"value": statement.excluded.value},
    )
    rows = [{"series_id": series_id, "ts": t, "value": v} for t, v in zip(ts, values, strict=True)]
    session.execute(statement, rows)
    return sum(1 for t in ts if t in existing)


def _copy_upsert_postgresql(
    session: Session, series_id: str, ts: Sequence[datetime], values: Sequence[float]
) -> int:
    """COPY into a temporary table, then one INSERT ... ON CONFLICT: several times the rate of
    batched INSERT statements for 100,000-row uploads. Returns the number of updated rows."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        # Per connection, emptied at every commit or rollback, so pooled connections reuse it.
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS observations_upload "
            "(ts timestamp NOT NULL, value double precision NOT NULL) ON COMMIT DELETE ROWS"
        )
        with cursor.copy("COPY observations_upload (ts, value) FROM STDIN") as copy:
            for row in zip(ts, values, strict=True):
                copy.write_row(row)
        cursor.execute(
            "SELECT count(*) FROM observations_upload u JOIN observations o "
            "ON o.series_id = %s AND o.ts = u.ts",
            (series_id,),
        )
        (updated,) = cursor.fetchone() or (0,)
        cursor.execute(
            "INSERT INTO observations (series_id, ts, value) "
            "SELECT %s, ts, value FROM observations_upload "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value",
            (series_id,),
        )
    return int(updated)


def read_observations(
    session: Session,
    *,
    series_id: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[Observation]:
    get_series(session, series_id=series_id)
    query = select(Observation).where(Observation.series_id == series_id)
    if start is not None:
        query = query.where(Observation.ts >= start)
    if end is not None:
        query = query.where(Observation.ts <= end)
    return list(session.scalars(query.order_by(Observation.ts).limit(limit)))


# Series rows by a list of ids on PostgreSQL, as a join on the unnested array: each id is
# looked up once (a hash or the primary key), whatever the plan. psycopg prepares a statement
# at its sixth run on a connection, and PostgreSQL plans it generically from the eleventh,
# for ten ids: as a filter (``id = ANY(array)``) on a table of 1,000 series that plan scans
# them all and compares each with every id, and the forecast log's check of 1,000 ids took
# 12-18 ms of the server's CPU instead of 2.5. ``IN`` with 1,000 bound values took 7-9 ms,
# statement building included, against 2 ms for the join.
SERIES_BY_IDS = (
    "SELECT {columns} FROM unnest(CAST({ids} AS varchar[])) AS ids(id) "
    "JOIN series s ON s.id = ids.id {lock}"
)
# The window read's series (through SQLAlchemy) and the forecast log's check, which locks the
# series until its rows are in (through psycopg).
SERIES_OF_WINDOWS = text(
    SERIES_BY_IDS.format(columns="s.id, s.frequency, s.created_at", ids=":ids", lock="")
)
CREATED_BY_IDS_LOCKED = SERIES_BY_IDS.format(
    columns="s.id, s.created_at", ids="%s", lock="FOR KEY SHARE OF s"
)

# The last :size observations of each id, newest first: the (series_id, ts) primary key walked
# backwards per series.
LATEST_BY_IDS = text(
    "SELECT ids.id, w.ts, w.value FROM unnest(CAST(:ids AS varchar[])) AS ids(id) "
    "CROSS JOIN LATERAL (SELECT o.ts, o.value FROM observations o "
    "WHERE o.series_id = ids.id ORDER BY o.ts DESC LIMIT :size) AS w"
)


def latest_windows(
    session: Session, *, series_ids: Sequence[str], size: int
) -> dict[str, StoredWindow]:
    """The last ``size`` observations of every requested series: two queries in all.

    PostgreSQL walks the (series_id, ts) primary key backwards per series (LATERAL ... LIMIT);
    other databases use a window function. Unknown ids raise SeriesNotFound (the first one).
    """
    unique_ids = list(dict.fromkeys(series_ids))
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql:  # a join on the ids, not IN (...): see SERIES_BY_IDS
        found = session.execute(SERIES_OF_WINDOWS, {"ids": unique_ids})
    else:
        found = session.execute(
            select(Series.id, Series.frequency, Series.created_at).where(Series.id.in_(unique_ids))
        )
    series: dict[str, tuple[str, datetime]] = {sid: (freq, _utc(at)) for sid, freq, at in found}
    missing = [sid for sid in unique_ids if sid not in series]
    if missing:
        raise SeriesNotFound(missing[0])
    if postgresql:
        rows = session.execute(LATEST_BY_IDS, {"ids": unique_ids, "size": size}).tuples()
    else:
        position = (
            func.row_number()
            .over(partition_by=Observation.series_id, order_by=Observation.ts.desc())
            .label("position")
        )
        ranked = (
            select(Observation.series_id, Observation.ts, Observation.value, position)
            .where(Observation.series_id.in_(unique_ids))
            .subquery()
        )
        rows = session.execute(
            select(ranked.c.series_id, ranked.c.ts, ranked.c.value).where(ranked.c.position <= size)
        ).tuples()
    observed: dict[str, list[tuple[datetime, float]]] = {sid: [] for sid in unique_ids}
    for sid, ts, value in rows:
        observed[sid].append((ts, value))
    windows = {}
    for sid, pairs in observed.items():
        pairs.sort()  # rows may come newest first
        windows[sid] = StoredWindow(
            sid,
            *series[sid],
            [ts for ts, _ in pairs],
            np.array([value for _, value in pairs], dtype=np.float64),
        )
    return windows


def record_forecasts(
    session: Session,
    *,
    rows: list[dict[str, object]],
    logged: MutableMapping[str, int] | None = None,
) -> int:
    """Log forecasts served for stored series (columns of ForecastLog); returns rows written.

    The log is written after the fact, so a series may have been deleted since its forecast,
    or deleted and created again under the same id: those rows are skipped (a forecast issued
    before its series was created is not that series'). The remaining series rows are locked
    (KEY SHARE on PostgreSQL) until commit so a concurrent delete can't slip between the check
    and the insert.

    ``logged``, kept by the caller from one call to the next, maps a series id to a digest of
    the last forecast written for it (Python's 64-bit hash of its fields: two different
    forecasts of one series share one with odds of about one in 10^19). A row whose forecast
    is the same as that one (the same series, created at the same time, the same model and
    version, horizon, target timestamps and values) is skipped: a series whose data and model
    did not change is served the same forecast again and again, and the log keeps it once,
    issued when it was first served. The row in force at any time is still the forecast that
    was served then. With ``logged``, each row carries ``series_created_at`` (the series' own,
    read with its window), so repeats are skipped before the database is asked anything: a
    flush of repeats costs no round trip. ``logged`` is updated once the rows are committed."""
    digests: list[int] = []
    if logged is not None:
        rows, digests = _changed_forecasts(rows, logged)
    ids = {str(row["series_id"]) for row in rows}
    if not ids:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter and the rows as tuples, through psycopg itself: for 1,000 ids
        # 2.7 ms of CPU against 4.3 ms through SQLAlchemy's statement and result handling
        # (the log's writer shares the GIL with the event loop).
        with _driver(session).cursor() as cursor:
            cursor.execute(CREATED_BY_IDS_LOCKED, [list(ids)])
            created: dict[str, datetime] = dict(cursor.fetchall())
    else:
        query = select(Series.id, Series.created_at).where(Series.id.in_(ids))
        created = {sid: _utc(at) for sid, at in session.execute(query)}
    kept = [
        i
        for i, row in enumerate(rows)
        if row["series_id"] in created and created[str(row["series_id"])] <= row["issued_at"]  # type: ignore[operator]
    ]
    if kept and session.get_bind().dialect.name == "postgresql":
        _copy_forecasts_postgresql(session, [rows[i] for i in kept])
    elif kept:
        columns = [{c: rows[i][c] for c in FORECAST_LOG_COLUMNS} for i in kept]
        session.execute(insert(ForecastLog), columns)
    session.commit()
    if logged is not None:
        logged.update((str(rows[i]["series_id"]), digests[i]) for i in kept)
    return len(kept)


def _changed_forecasts(
    rows: list[dict[str, object]], logged: Mapping[str, int]
) -> tuple[list[dict[str, object]], list[int]]:
    """The rows whose forecast differs from the last one logged for their series (before
    them in ``rows``, or in ``logged``), and the digest of each."""
    changed, digests = [], []
    last: dict[str, int] = {}
    for row in rows:
        sid = str(row["series_id"])
        digest = hash(
            (
                row["series_created_at"],
                row["model_name"],
                row["model_version"],
                row["horizon"],
                tuple(row["target_ts"]),  # type: ignore[arg-type]
                tuple(row["values"]),  # type: ignore[arg-type]
            )
        )
        if digest != last.get(sid, logged.get(sid)):
            changed.append(row)
            digests.append(digest)
            last[sid] = digest
    return changed, digests


def _utc(value: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive (stored in UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


FORECAST_LOG_COLUMNS = (
    "series_id",
    "model_name",
    "model_version",
    "issued_at",
    "horizon",
    "target_ts",
    "values",
)


def _copy_forecasts_postgresql(session: Session, rows: list[dict[str, object]]) -> None:
    """COPY, in its text format written here: several times the rate of batched INSERTs or of
    psycopg's per-value adaptation, which matters because the log is written by a thread that
    shares the GIL with the event loop (a 1,000-series forecast is 1,000 rows). The JSON
    columns are written by orjson: 0.7 us a row of 18 steps, against 1.0 with pydantic-core's
    ``to_json`` and about 13 with the json module and float reprs."""
    columns = ", ".join(f'"{c}"' for c in FORECAST_LOG_COLUMNS)
    lines = []
    # The fields a request's rows share, and their target timestamps (a request's series
    # mostly end together), are written once. With the check above through psycopg, logging
    # 1,000 rows took 10 ms of the writer's CPU, against 17 before.
    head: dict[tuple[object, ...], str] = {}
    written: dict[tuple[object, ...], str] = {}  # target timestamps -> their JSON
    for row in rows:
        key = (row["model_name"], row["model_version"], row["issued_at"], row["horizon"])
        if (shared := head.get(key)) is None:
            issued = row["issued_at"]
            assert isinstance(issued, datetime)
            shared = head[key] = "\t".join(
                (
                    _copy_text(str(row["model_name"])),
                    _copy_text(str(row["model_version"])),
                    issued.isoformat(),
                    str(row["horizon"]),
                )
            )
        target = row["target_ts"]
        assert isinstance(target, Sequence)
        steps = tuple(target)  # the same tuple when the rows carry their labels' own
        if (labels := written.get(steps)) is None:
            labels = written[steps] = _copy_text(orjson.dumps(steps).decode())
        fields = (
            _copy_text(str(row["series_id"])),
            shared,
            labels,
            orjson.dumps(row["values"]).decode(),  # finite floats: digits, signs, dots and "e"
        )
        lines.append("\t".join(fields))
    with (
        _driver(session).cursor() as cursor,
        cursor.copy(f"COPY forecasts ({columns}) FROM STDIN") as copy,
    ):
        copy.write("\n".join(lines) + "\n")


def _driver(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under the session's, in its transaction."""
    raw = session.connection().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def _copy_text(value: str) -> str:
    """A value in COPY's text format: backslash, tab and line breaks escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def series_for_training(
    session: Session, *, frequency: str, series_ids: Sequence[str] | None = None
) -> list[tuple[str, str, datetime, float]]:
    """Every observation of the stored series of one frequency (or of the named ones), as
    (series_id, frequency, ts, value) rows ordered by series and time: a retrain's data.
    Frequencies match as offsets, as routing does: QS-JAN is QS."""
    if series_ids is None:
        stored = session.execute(select(Series.id, Series.frequency)).all()
        series_ids = [sid for sid, freq in stored if same_frequency(freq, frequency)]
    query = (
        select(Observation.series_id, Series.frequency, Observation.ts, Observation.value)
        .join(Series, Series.id == Observation.series_id)
        .where(Observation.series_id.in_(list(series_ids)))
        .order_by(Observation.series_id, Observation.ts)
    )
    return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]
