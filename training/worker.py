"""``python -m training worker``: claims retrain jobs from the service's database and runs them.

Several workers may run against one database: each claim is won by exactly one of them. While
a job runs, a heartbeat thread renews its lease; a worker killed mid-job stops renewing, and
the next worker that looks for work requeues the job once the lease has expired (or fails it
after FORECAST_RETRAIN_MAX_ATTEMPTS). On SIGTERM a worker stops at the end of the current
epoch and gives its job back to the queue.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import jobs
from service.db.session import build_engine, build_sessionmaker
from service.db.tables import RetrainJob
from training.retrain import run_job

logger = logging.getLogger(__name__)

RECORD_ATTEMPTS = 8  # about two minutes of retries


class JobStopped(Exception):
    """Training stopped early: the worker is shutting down, or it lost the job's lease."""


@dataclass
class Heartbeat:
    """Renews one job's lease every heartbeat_s and records progress (epoch of total)."""

    sessions: sessionmaker[Session]
    settings: Settings
    job_id: str
    worker: str
    progress: tuple[int, int] | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def beat(self) -> None:
        with self.sessions() as session:
            still_ours = jobs.heartbeat(
                session,
                job_id=self.job_id,
                worker=self.worker,
                lease_s=self.settings.retrain_lease_s,
                progress=self.progress,
            )
        if not still_ours:
            logger.error("job %s: the lease was lost (requeued or failed meanwhile)", self.job_id)
            self.lost.set()

    def still_ours(self) -> bool:
        """Renew now and say whether the job is still this worker's (before promoting)."""
        self.beat()
        return not self.lost.is_set()

    def run(self) -> None:
        while not self.done.wait(self.settings.retrain_heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # the database blinked; the lease has slack, keep beating
                logger.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            if self.lost.is_set():
                return


class Worker:
    def __init__(self, settings: Settings, parent_pid: int | None = None) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.sessions = build_sessionmaker(build_engine(settings.database_url))
        self.stopping = threading.Event()
        self.parent_pid = parent_pid

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("worker %s: signal %d, stopping after the current epoch", self.name, signum)
        self.stopping.set()

    def run(self, once: bool = False) -> None:
        """Claim and run jobs until stopped (``once``: until the queue is empty)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        # MLflow reads its store from the environment; make it the settings' one.
        os.environ["MLFLOW_TRACKING_URI"] = self.settings.mlflow_tracking_uri
        logger.info("worker %s: waiting for retrain jobs", self.name)
        while not self.stopping.is_set() and self._parent_alive():
            try:
                with self.sessions() as session:
                    job = jobs.claim_job(
                        session,
                        worker=self.name,
                        lease_s=self.settings.retrain_lease_s,
                        max_attempts=self.settings.retrain_max_attempts,
                    )
                if job is not None:
                    self.execute(job)
                    continue
            except Exception as exc:  # no database, no schema yet...: wait and try again
                logger.warning("worker %s: %s: %s", self.name, type(exc).__name__, exc)
            if once:
                return
            self.stopping.wait(self.settings.worker_poll_s)

    def _parent_alive(self) -> bool:
        """An embedded worker ends with the api that started it."""
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def execute(self, job: RetrainJob) -> None:
        logger.info("job %s: retrain %s (attempt %d)", job.id, job.model_name, job.attempts)
        heartbeat = Heartbeat(self.sessions, self.settings, job.id, self.name)
        thread = threading.Thread(target=heartbeat.run, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()

        epochs = 0

        def on_epoch(member: int, members: int, at_most: int) -> None:
            # Progress: epochs run of the most there can be (early stopping ends sooner).
            nonlocal epochs
            epochs += 1
            heartbeat.progress = (epochs, members * at_most)
            if self.stopping.is_set() or heartbeat.lost.is_set():
                raise JobStopped

        result, version, error = None, None, None
        try:
            outcome = run_job(
                job.model_name, job.params, self.settings, on_epoch, heartbeat.still_ours
            )
            status, result, version = outcome.status, outcome.result, outcome.model_version
        except JobStopped:
            status = "stopped"
        except Exception as exc:
            logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            heartbeat.done.set()
            thread.join()
        if status == "stopped":
            released = not heartbeat.lost.is_set() and self._record(
                jobs.release_job, job_id=job.id, worker=self.name
            )
            logger.info("job %s: stopped%s", job.id, ", back in the queue" if released else "")
            return
        recorded = self._record(
            jobs.finish_job,
            job_id=job.id,
            worker=self.name,
            status=status,
            result=result,
            error=error,
            model_version=version,
            progress=(epochs, epochs) if status != "failed" else heartbeat.progress,
        )
        note = "" if recorded else " (the lease was lost: not recorded)"
        logger.info("job %s: %s%s", job.id, status, note)

    def _record(self, write: Callable[..., bool], **kwargs: Any) -> bool:
        """Write a job's outcome, retrying while the database is away: a result that is not
        written would leave the job running until its lease expires, and then run again."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                with self.sessions() as session:
                    return write(session, **kwargs)
            except OperationalError as exc:
                logger.warning("could not record job %s (%s); retrying", kwargs["job_id"], exc)
                time.sleep(min(30.0, 2.0**attempt))
        return False
