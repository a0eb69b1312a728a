"""The retrain queue on SQLite and PostgreSQL: one active job per model, claims that only one
worker wins, leases that expire into a requeue and, past the retry limit, a failure."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.db import jobs
from service.db.session import build_engine, build_sessionmaker


@pytest.fixture
def sessions(database_url):
    engine = build_engine(database_url)
    yield build_sessionmaker(engine)
    engine.dispose()


def test_one_active_job_per_model(sessions):
    with sessions() as session:
        first, created = jobs.create_job(
            session, model_name="m", params={"mode": "scratch"}, max_attempts=3
        )
        again, created_again = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
        other, created_other = jobs.create_job(session, model_name="n", params={}, max_attempts=3)
    assert created and not created_again and created_other
    assert again.id == first.id and again.params == {"mode": "scratch"}
    assert other.id != first.id


def test_concurrent_creates_make_one_job(sessions):
    def create(_: int) -> tuple[str, bool]:
        with sessions() as session:
            job, created = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
            return job.id, created

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_a_claim_is_won_once_and_a_finished_job_frees_the_model(sessions):
    with sessions() as session:
        job, _ = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
    with sessions() as a, sessions() as b:
        won = jobs.claim_job(a, worker="a", lease_s=60, max_attempts=3)
        lost = jobs.claim_job(b, worker="b", lease_s=60, max_attempts=3)
    assert won is not None and won.id == job.id and won.status == "running"
    assert won.attempts == 1 and lost is None
    with sessions() as session:
        assert jobs.heartbeat(session, job_id=job.id, worker="a", lease_s=60, progress=(3, 10))
        assert not jobs.heartbeat(session, job_id=job.id, worker="b", lease_s=60)
        assert jobs.finish_job(
            session, job_id=job.id, worker="a", status="rejected", result={"decision": "x"}
        )
        done = jobs.get_job(session, job_id=job.id)
        assert (done.status, done.epoch, done.total_epochs) == ("rejected", 3, 10)
        _, created = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
    assert created  # the model may be retrained again


def test_an_expired_lease_is_requeued_then_failed_after_the_retry_limit(sessions):
    with sessions() as session:
        job, _ = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
    for attempt in (1, 2):
        with sessions() as session:
            claimed = jobs.claim_job(session, worker=f"w{attempt}", lease_s=0.01, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.05)  # the worker died: no heartbeat renews the lease
    with sessions() as session:
        assert jobs.claim_job(session, worker="w3", lease_s=60, max_attempts=2) is None
        failed = jobs.get_job(session, job_id=job.id)
        assert failed.status == "failed" and "lease expired" in (failed.error or "")
        # The dead worker's late report changes nothing.
        assert not jobs.finish_job(session, job_id=job.id, worker="w2", status="succeeded")


def test_a_released_job_goes_back_to_the_queue_without_using_an_attempt(sessions):
    with sessions() as session:
        job, _ = jobs.create_job(session, model_name="m", params={}, max_attempts=3)
        jobs.claim_job(session, worker="a", lease_s=60, max_attempts=3)
        assert jobs.release_job(session, job_id=job.id, worker="a")
        again = jobs.claim_job(session, worker="b", lease_s=60, max_attempts=3)
    assert again is not None and again.id == job.id and again.attempts == 1
