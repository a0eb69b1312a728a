"""Liveness and readiness probes (compose and Kubernetes healthchecks call these)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
    if forecaster is None:
        body = Readiness(status="unavailable", reason=request.app.state.model_error)
        return JSONResponse(status_code=503, content=body.model_dump(exclude_none=True))
    m = forecaster.manifest
    return Readiness(
        status="ready",
        model=ModelRef(name=m.name, version=m.version),
        provider=forecaster.provider,
    )
