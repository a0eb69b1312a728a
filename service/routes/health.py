"""Liveness and readiness probes (compose and Kubernetes healthchecks call these)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.model_set import ModelSet
from service.schemas import Liveness, LoadedModel, Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "No model is loaded; reason says why."}},
)
async def ready(request: Request) -> Readiness | JSONResponse:
    models: ModelSet = request.app.state.models
    reason = None
    if not models.models:
        reason = f"no model is loaded: {models.refused}"
    else:
        reason = await run_in_threadpool(_database_problem, request.app.state.engine)
    if reason is not None:
        body = Readiness(status="unavailable", reason=reason)
        return JSONResponse(status_code=503, content=body.model_dump(exclude_none=True))
    return Readiness(
        status="ready",
        models=[
            LoadedModel(
                name=f.manifest.name,
                version=f.manifest.version,
                frequency=f.manifest.frequency,
                input_size=f.manifest.input_size,
                horizon=f.manifest.horizon,
                quantiles=f.manifest.quantiles,
                provider=f.provider,
            )
            for _, f in sorted(models.models.items())
        ],
        refused=models.refused or None,
    )


def _database_problem(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None
