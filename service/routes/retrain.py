"""Retrain jobs: queue one (admin), follow it, list recent ones. Workers do the training."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.auth import ADMIN, READ
from service.db import jobs
from service.db.tables import RetrainJob
from service.deps import ModelsDep, SessionsDep, SettingsDep
from service.errors import InvalidInput, UnknownFrequency
from service.model_set import ModelSet
from service.schemas import RetrainJobList, RetrainJobOut, RetrainRequest
from service.timeindex import parse_frequency

router = APIRouter(prefix="/retrain", tags=["retrain"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid admin bearer token."},
    422: {"description": "Unknown model or frequency; detail names the field."},
}


def job_out(job: RetrainJob, request: Request) -> RetrainJobOut:
    result = job.result or {}
    progress = None
    if job.epoch is not None and job.total_epochs is not None:
        progress = {"epoch": job.epoch, "total_epochs": job.total_epochs}
    return RetrainJobOut.model_validate(
        {
            "id": job.id,
            "model": job.model_name,
            "status": job.status,
            "params": job.params,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "attempts": job.attempts,
            "progress": progress,
            "error": job.error,
            "candidate": result.get("candidate"),
            "champion": result.get("champion"),
            "decision": result.get("decision"),
            "reason": result.get("reason"),
            "model_version": job.model_version,
            "status_url": str(request.url_for("get_retrain_job", job_id=job.id)),
        }
    )


def _model_name(body: RetrainRequest, models: ModelSet) -> str:
    if body.model is not None:
        return models.named(body.model, ("body", "model")).manifest.name
    if body.frequency is not None:
        try:
            parse_frequency(body.frequency)
        except ValueError as exc:
            raise UnknownFrequency(str(exc), ("body", "frequency")) from exc
        return models.for_frequency(body.frequency, ("body", "frequency")).manifest.name
    if len(models.models) == 1:
        return next(iter(models.models))
    raise InvalidInput(
        f"name the model or the frequency to retrain; loaded models: {sorted(models.models)}",
        ("body", "model"),
    )


@router.post(
    "",
    dependencies=[ADMIN],
    status_code=202,
    response_model=RetrainJobOut,
    responses={
        **ERRORS,
        200: {"description": "A retrain of this model is already queued or running."},
    },
)
async def queue_retrain(
    request: Request,
    response: Response,
    models: ModelsDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    body: Annotated[RetrainRequest | None, Body()] = None,
) -> RetrainJobOut:
    """Queue a retrain. 202 with the new job; 200 with the existing one when a retrain of the
    same model is already queued or running (so a scheduler may call this repeatedly)."""
    body = body or RetrainRequest()
    name = _model_name(body, models)
    params = body.model_dump(exclude={"model"}, exclude_none=True)

    def create() -> tuple[RetrainJob, bool]:
        with sessions() as session:
            return jobs.create_job(
                session,
                model_name=name,
                params=params,
                max_attempts=settings.retrain_max_attempts,
            )

    job, created = await run_in_threadpool(create)
    if not created:
        response.status_code = 200
    return job_out(job, request)


@router.get(
    "/{job_id}",
    response_model=RetrainJobOut,
    name="get_retrain_job",
    dependencies=[READ],
    responses={404: {"description": "No job with this id."}},
)
async def get_retrain_job(
    job_id: Annotated[str, Path(max_length=36)], request: Request, sessions: SessionsDep
) -> RetrainJobOut:
    """Status, timestamps, progress, error, backtest metrics and the decision."""

    def read() -> RetrainJob:
        with sessions() as session:
            return jobs.get_job(session, job_id=job_id)

    return job_out(await run_in_threadpool(read), request)


@router.get("", response_model=RetrainJobList, dependencies=[READ])
async def list_retrain_jobs(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    model: str | None = None,
) -> RetrainJobList:
    """Recent jobs, newest first."""
    if limit > settings.max_page_size:
        raise InvalidInput(
            f"limit {limit} exceeds the page size limit of {settings.max_page_size} "
            "(FORECAST_MAX_PAGE_SIZE)",
            ("query", "limit"),
        )

    def read() -> list[RetrainJob]:
        with sessions() as session:
            return jobs.list_jobs(session, limit=limit, model_name=model)

    return RetrainJobList(items=[job_out(j, request) for j in await run_in_threadpool(read)])
