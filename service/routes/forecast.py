"""Forecasts for inline histories and stored series."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope

from service.auth import READ
from service.deps import ModelsDep, ServingDep, loaded_models
from service.errors import ServiceError, UnsupportedMediaType
from service.limits import media_type
from service.plain_routes import PlainRoute, header_values, read_body
from service.schemas import (
    FORECAST_EXAMPLE,
    SERIES_ID_PATTERN,
    STORED_FORECAST_EXAMPLE,
    ForecastRequest,
    ForecastResponse,
    SeriesInput,
)
from service.serving import answer

router = APIRouter(tags=["forecast"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "A stored series named in the request does not exist."},
    422: {"description": "A series or the horizon breaks a limit; detail names the field."},
    503: {"description": "No model is loaded."},
}


FORECAST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ForecastRequest"},
                "examples": {
                    "stored": {"value": STORED_FORECAST_EXAMPLE},
                    "inline": {"value": FORECAST_EXAMPLE},
                },
            }
        },
    }
}


LARGE_BODY_BYTES = 256 * 1024


async def read_forecast_request(content_type: str | None, receive: Receive) -> ForecastRequest:
    """The body, parsed and validated in one pass by pydantic's JSON parser: about a quarter of
    the time of FastAPI's json.loads followed by validation. Errors keep FastAPI's shape (422,
    loc starting with "body")."""
    media = media_type(content_type or "application/json")
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted; send application/json",
            ("header", "content-type"),
        )
    raw = await read_body(receive)
    try:
        if len(raw) > LARGE_BODY_BYTES:  # milliseconds of parsing: not on the event loop
            return await run_in_threadpool(ForecastRequest.model_validate_json, raw)
        return ForecastRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def forecast_json(scope: Scope, receive: Receive) -> bytes:
    """Series are either stored (``{"id": "air"}``) or inline (``id``, ``history``, ``start``,
    ``freq``); both may be mixed. All of them run as one batched inference, shared with
    concurrent requests for the same model. Returns the JSON of the ForecastResponse."""
    state = scope["app"].state
    authorization, content_type = header_values(scope, b"authorization", b"content-type")
    state.tokens.check(authorization, "read")
    body = await read_forecast_request(content_type, receive)
    return await answer(body, loaded_models(state), state.serving)


async def forecast(request: Request) -> Response:
    """The documented route: the same answer as the plain route below."""
    return Response(
        await forecast_json(request.scope, request.receive), media_type="application/json"
    )


# The api's busiest route is answered by service.plain_routes, before FastAPI's inner layers
# and the router: FastAPI's per-request handling (dependency solving, the included-router
# layers) cost a quarter of its throughput, the layers around the router another 12%
# (bench/serving.py). The same answer is also registered as a FastAPI route so the OpenAPI
# document describes it; that one is never reached, and would answer the same if the plain
# route were taken out.
FAST_ROUTES = [PlainRoute("/forecast", "POST", forecast_json)]
router.add_api_route(
    "/forecast",
    forecast,
    methods=["POST"],
    summary="Forecast",
    response_model=ForecastResponse,
    responses={**ERRORS, 415: {"description": "The body is not JSON."}},
    dependencies=[READ],  # for the document: the function checks the token itself
    openapi_extra=FORECAST_BODY,
)


@router.get(
    "/series/{series_id}/forecast",
    response_model=ForecastResponse,
    responses=ERRORS,
    dependencies=[READ],
)
async def forecast_stored(
    series_id: Annotated[str, Path(pattern=SERIES_ID_PATTERN)],
    models: ModelsDep,
    serving: ServingDep,
    horizon: Annotated[int, Query(ge=1)],
    level: Annotated[list[Annotated[float, Field(gt=0, lt=100)]] | None, Query()] = None,
    model: Annotated[str | None, Query(description="Default: the series' frequency's.")] = None,
) -> Response:
    """The forecast for one stored series, from its latest observations."""
    body = ForecastRequest(
        series=[SeriesInput(id=series_id)], horizon=horizon, level=level, model=model
    )
    try:
        payload = await answer(body, models, serving)
    except ServiceError as exc:
        # This request has no body: point at the path or the query parameter instead.
        if exc.loc[:3] == ["body", "series", 0]:
            exc.loc = ["path", "series_id"]
        elif exc.loc[:1] == ["body"] and exc.loc[1:2] in (["horizon"], ["model"], ["level"]):
            exc.loc = ["query", *exc.loc[1:]]
        raise
    return Response(payload, media_type="application/json")
