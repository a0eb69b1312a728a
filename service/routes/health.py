"""Liveness and readiness probes (compose and Kubernetes healthchecks call these)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.schemas import Liveness, ModelRef, Readiness

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
    forecaster = request.app.state.forecaster
    reason = None
    if forecaster is None:
        reason = f"no model is loaded: {request.app.state.model_error}"
    else:
        reason = await run_in_threadpool(_database_problem, request.app.state.engine)
    if reason is not None:
        body = Readiness(status="unavailable", reason=reason)
        return JSONResponse(status_code=503, content=body.model_dump(exclude_none=True))
    m = forecaster.manifest
    return Readiness(
        status="ready",
        model=ModelRef(name=m.name, version=m.version),
        provider=forecaster.provider,
    )


def _database_problem(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None
