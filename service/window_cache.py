"""Recent windows of stored series, kept in memory and invalidated when a series changes.

Reading a series' latest window costs about a millisecond of database round trips and
SQLAlchemy work; the forecast itself, a tenth of that. So the api keeps the windows it read
(least recently used first out) and drops one whenever its series changes:
- in this process, right after the change commits and before it is acknowledged, so a
  client that uploads and then forecasts through the same process sees its upload;
- in every other api process through PostgreSQL's LISTEN/NOTIFY: the writing transaction
  sends ``NOTIFY forecast_series_changed, '<id>'``, delivered to listeners when it commits.
  Another process may answer from the old window in the moments (sub-millisecond on one
  host) before the notification arrives.

The cache only serves while its listener is connected and has proved so within the last
3 seconds (a query every second, with TCP keepalives); when the connection drops it is
emptied and bypassed until LISTEN is in place again. So a change made while notifications
can't arrive is served stale for at most those seconds. It is used on PostgreSQL only: SQLite
has no notifications (reads there go to the database), and a PgBouncer in transaction mode
does not deliver them (point DATABASE_URL at PostgreSQL or a session-mode pool).

A read that started before a change must not put the old window back after the change has
been invalidated: each invalidation is stamped with a generation number, and a fill is kept
only for series not invalidated since its read began. This relies on invalidating only after
the change has committed (both paths above do), so that a read begun after the stamp sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

import psycopg
from sqlalchemy.engine import make_url

from service.db.repository import StoredWindow

logger = logging.getLogger(__name__)

CHANNEL = "forecast_series_changed"


class WindowCache:
    """Thread-safe: read and filled from the event loop and the thread pool, invalidated from
    the listener thread."""

    MAX_TRACKED_CHANGES = 100_000

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.lock = threading.Lock()
        self.windows: OrderedDict[str, tuple[int, StoredWindow]] = (
            OrderedDict()
        )  # id -> (size read, window)
        self.generation = 0
        self.changed_at: dict[str, int] = {}  # series id -> generation of its last change
        self.floor = 0  # fills of reads begun before this generation are discarded
        self.enabled = False  # only while the listener is connected
        # ... and has lately proved it: a connection that died silently (a partition, no
        # reset) would otherwise look connected until TCP gives up, minutes later.
        self.alive_until = 0.0
        self.hits = self.misses = 0  # windows served from the cache, and read instead

    def begin_read(self) -> int:
        """The generation a read starts at: pass it to ``fill``."""
        with self.lock:
            return self.generation

    def get(
        self, series_ids: Iterable[str], size: int
    ) -> tuple[dict[str, StoredWindow], list[str]]:
        """The cached windows holding at least ``size`` observations (or the whole series),
        and the ids that must be read from the database."""
        hits: dict[str, StoredWindow] = {}
        misses: list[str] = []
        serving = self.enabled and time.monotonic() < self.alive_until
        with self.lock:
            for sid in series_ids:
                entry = self.windows.get(sid) if serving else None
                if entry is not None and (entry[0] >= size or len(entry[1].ts) < entry[0]):
                    self.windows.move_to_end(sid)
                    hits[sid] = entry[1]
                else:
                    misses.append(sid)
            self.hits += len(hits)
            self.misses += len(misses)
        return hits, misses

    def fill(self, windows: dict[str, StoredWindow], size: int, read_generation: int) -> None:
        with self.lock:
            if not self.enabled or read_generation < self.floor:
                return
            for sid, window in windows.items():
                # A change stamped with the read's generation came before the read began
                # (both are taken under the lock), so the read saw it; only a later one
                # may have been missed.
                if self.changed_at.get(sid, -1) > read_generation:
                    continue  # changed while it was being read: the read may be stale
                self.windows[sid] = (size, window)
                self.windows.move_to_end(sid)
            while len(self.windows) > self.max_series:
                self.windows.popitem(last=False)

    def invalidate(self, series_id: str) -> None:
        with self.lock:
            self.generation += 1
            self.windows.pop(series_id, None)
            self.changed_at[series_id] = self.generation
            if len(self.changed_at) > self.MAX_TRACKED_CHANGES:
                # Forget the stamps, and with them every read begun before now (one begun at
                # this generation came after this change, as in fill).
                self.changed_at.clear()
                self.floor = self.generation

    def confirm_alive(self, for_s: float) -> None:
        """The listener's connection answered just now: serve for ``for_s`` more seconds."""
        self.alive_until = time.monotonic() + for_s

    def set_enabled(self, enabled: bool) -> None:
        """Empty the cache and start or stop serving from it (the listener's state)."""
        with self.lock:
            self.generation += 1
            self.floor = self.generation  # reads begun before now may have missed a change
            self.windows.clear()
            self.changed_at.clear()
            self.enabled = enabled

    def __len__(self) -> int:
        return len(self.windows)


class ChangeListener:
    """LISTEN on its own connection, in a daemon thread; reconnects with a delay when the
    connection drops. The cache serves only while this is connected."""

    RETRY_S = 2.0
    POLL_S = 1.0  # how often the connection is proved alive
    TRUST_S = 3.0  # how long a proof lets the cache serve

    def __init__(self, database_url: str, cache: WindowCache) -> None:
        url = make_url(database_url)
        params = {str(k): str(v) for k, v in url.query.items()}  # sslmode, host=/socket...
        params.update(
            {
                k: str(v)
                for k, v in url.translate_connect_args(database="dbname", username="user").items()
            }
        )
        self.conninfo = psycopg.conninfo.make_conninfo(
            **params,
            connect_timeout=5,
            application_name="forecast-series-listener",  # how ops tell it in pg_stat_activity
            # A dead peer is noticed in seconds, not at TCP's default of minutes.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=2,
            tcp_user_timeout=5000,
            options="-c statement_timeout=5000",
        )
        self.cache = cache
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, name="series-change-listener", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.cache.set_enabled(True)  # empty: nothing from before LISTEN is kept
                    self.connected.set()
                    logger.info("window cache on: listening for series changes")
                    while not self.stopping.is_set():
                        conn.execute("SELECT 1")  # the connection is alive: trust it a while
                        self.cache.confirm_alive(self.TRUST_S)
                        for note in conn.notifies(timeout=self.POLL_S):
                            self.cache.invalidate(note.payload)
            except psycopg.Error as exc:
                logger.warning("window cache off until the database is back: %s", exc)
            finally:
                self.connected.clear()
                self.cache.set_enabled(False)
            self.stopping.wait(self.RETRY_S)
