"""Retrain jobs: the queue the api writes and workers claim. Every function commits, so a
caller that gets a result back knows the change is durable.

Claiming is safe with several workers: on PostgreSQL the queued row is locked with
``FOR UPDATE SKIP LOCKED`` (a second worker skips it instead of waiting), and on every dialect
the claim is a conditional UPDATE that only one worker can win.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.tables import ACTIVE_STATUSES, RetrainJob
from service.errors import JobNotFound

FINISHED_STATUSES = ("succeeded", "rejected", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


def _update(session: Session, *where: ColumnElement[bool], **values: Any) -> int:
    """UPDATE retrain_jobs SET values WHERE all of ``where``; returns the rows changed."""
    statement = update(RetrainJob).where(*where).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _owned(job_id: str, worker: str) -> tuple[ColumnElement[bool], ...]:
    """The job is running under this worker's lease (not requeued or failed meanwhile)."""
    return (RetrainJob.id == job_id, RetrainJob.worker == worker, RetrainJob.status == "running")


def create_job(
    session: Session, *, model_name: str, params: dict[str, Any], max_attempts: int
) -> tuple[RetrainJob, bool]:
    """Queue a retrain of ``model_name``, or return the one already queued or running for it
    (second value False). The database's unique index decides between concurrent callers.
    Leases that ran out are settled first, so a dead worker's job is not what comes back."""
    expire_leases(session, max_attempts=max_attempts)
    existing = active_job(session, model_name=model_name)
    if existing is not None:
        return existing, False
    job = RetrainJob(
        id=str(uuid.uuid4()),
        model_name=model_name,
        status="queued",
        params=params,
        created_at=_now(),
        attempts=0,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # another request queued one between our read and our insert
        existing = active_job(session, model_name=model_name)
        if existing is None:
            raise
        return existing, False
    return job, True


def active_job(session: Session, *, model_name: str) -> RetrainJob | None:
    query = select(RetrainJob).where(
        RetrainJob.model_name == model_name, RetrainJob.status.in_(ACTIVE_STATUSES)
    )
    return session.scalars(query).one_or_none()


def get_job(session: Session, *, job_id: str) -> RetrainJob:
    job = session.get(RetrainJob, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, *, limit: int, model_name: str | None = None) -> list[RetrainJob]:
    query = select(RetrainJob).order_by(RetrainJob.created_at.desc()).limit(limit)
    if model_name is not None:
        query = query.where(RetrainJob.model_name == model_name)
    return list(session.scalars(query))


def count_by_status(session: Session) -> dict[str, int]:
    """Jobs per status, every status present (0 when none): the metrics gauge."""
    counts = dict.fromkeys((*ACTIVE_STATUSES, *FINISHED_STATUSES), 0)
    for status, count in session.execute(
        select(RetrainJob.status, func.count()).group_by(RetrainJob.status)
    ):
        counts[status] = int(count)
    return counts


def expire_leases(session: Session, *, max_attempts: int) -> int:
    """Running jobs whose lease ran out (their worker died or hung): requeued while they have
    attempts left, failed with the reason otherwise. Returns how many changed."""
    now = _now()
    expired = (RetrainJob.status == "running", RetrainJob.lease_expires_at < now)
    requeued = _update(
        session,
        *expired,
        RetrainJob.attempts < max_attempts,
        status="queued",
        worker=None,
        lease_expires_at=None,
    )
    failed = _update(
        session,
        *expired,
        RetrainJob.attempts >= max_attempts,
        status="failed",
        finished_at=now,
        lease_expires_at=None,
        error=f"the worker's lease expired on each of {max_attempts} attempts "
        "(killed or hung); giving up",
    )
    session.commit()
    return requeued + failed


def claim_job(
    session: Session, *, worker: str, lease_s: float, max_attempts: int
) -> RetrainJob | None:
    """The oldest queued job, now running under ``worker``'s lease; None when there is none."""
    expire_leases(session, max_attempts=max_attempts)
    candidate = session.scalars(
        select(RetrainJob.id)
        .where(RetrainJob.status == "queued")
        .order_by(RetrainJob.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if candidate is None:
        session.commit()
        return None
    now = _now()
    won = _update(
        session,
        RetrainJob.id == candidate,
        RetrainJob.status == "queued",
        status="running",
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=lease_s),
        attempts=RetrainJob.attempts + 1,
        error=None,
    )
    session.commit()
    return get_job(session, job_id=candidate) if won == 1 else None


def heartbeat(
    session: Session,
    *,
    job_id: str,
    worker: str,
    lease_s: float,
    progress: tuple[int, int] | None = None,
) -> bool:
    """Renew the lease (and record progress: epoch of total). False when the job is no longer
    this worker's: its lease expired and it was requeued or failed meanwhile."""
    now = _now()
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
    }
    if progress is not None:
        values["epoch"], values["total_epochs"] = progress
    renewed = _update(session, *_owned(job_id, worker), **values)
    session.commit()
    return renewed == 1


def finish_job(
    session: Session,
    *,
    job_id: str,
    worker: str,
    status: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    model_version: str | None = None,
    progress: tuple[int, int] | None = None,
) -> bool:
    """Record the outcome; False (and nothing written) if the job is no longer this worker's."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"a job finishes as one of {FINISHED_STATUSES}, not {status!r}")
    epochs = {} if progress is None else {"epoch": progress[0], "total_epochs": progress[1]}
    done = _update(
        session,
        *_owned(job_id, worker),
        status=status,
        finished_at=_now(),
        lease_expires_at=None,
        result=result,
        error=None if error is None else error[:4000],
        model_version=model_version,
        **epochs,
    )
    session.commit()
    return done == 1


def release_job(session: Session, *, job_id: str, worker: str) -> bool:
    """Give a running job back to the queue (the worker is shutting down); the attempt it used
    does not count against the retry limit."""
    released = _update(
        session,
        *_owned(job_id, worker),
        status="queued",
        worker=None,
        lease_expires_at=None,
        attempts=RetrainJob.attempts - 1,
    )
    session.commit()
    return released == 1
