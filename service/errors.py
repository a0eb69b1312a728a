"""Domain errors and the one handler that turns them into HTTP responses.

Every error body has FastAPI's validation shape, ``{"detail": [{"loc", "msg", "type"}]}``,
so a client parses one format whether pydantic or the service refused the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from service.limits import BodyRefused

Loc = Sequence[str | int]


class ServiceError(Exception):
    status_code = 400
    type = "service_error"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, msg: str, loc: Loc = ()) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = list(loc)

    def details(self) -> list[dict[str, object]]:
        return [{"loc": self.loc, "msg": self.msg, "type": self.type}]


class InvalidInput(ServiceError):
    status_code = 422
    type = "invalid_input"


class HistoryTooShort(InvalidInput):
    type = "history_too_short"


class HorizonTooLong(InvalidInput):
    type = "horizon_too_long"


class UnknownFrequency(InvalidInput):
    type = "unknown_frequency"


class FrequencyNotServed(InvalidInput):
    type = "frequency_not_served"


class UnknownModel(InvalidInput):
    type = "unknown_model"


class QuantileNotServed(InvalidInput):
    type = "quantile_not_served"


class LimitExceeded(InvalidInput):
    type = "limit_exceeded"


class InvalidRows(InvalidInput):
    """Several rows of one request are wrong; each gets its own detail entry."""

    type = "invalid_row"

    def __init__(self, problems: list[tuple[Loc, str]], total: int) -> None:
        shown = f"{len(problems)} of {total}" if total > len(problems) else str(total)
        super().__init__(f"{shown} row(s) rejected; nothing from this request was stored")
        self.problems = problems

    def details(self) -> list[dict[str, object]]:
        return [{"loc": list(loc), "msg": msg, "type": self.type} for loc, msg in self.problems]


class HistoryGap(InvalidInput):
    type = "history_gap"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    type = "unsupported_media_type"


class SeriesNotFound(ServiceError):
    status_code = 404
    type = "series_not_found"

    def __init__(self, series_id: str, loc: Loc = ("path", "series_id")) -> None:
        super().__init__(
            f"series {series_id!r} does not exist; create it with PUT /series/{{id}}", loc
        )
        self.series_id = series_id


class SeriesConflict(ServiceError):
    status_code = 409
    type = "conflict"


class ModelNotFound(ServiceError):
    status_code = 404
    type = "model_not_found"


class JobNotFound(ServiceError):
    status_code = 404
    type = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no retrain job {job_id!r}; GET /retrain lists recent jobs", ("path", "job_id")
        )


class ModelNotReady(ServiceError):
    status_code = 503
    type = "model_not_ready"


async def _handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(
        status_code=exc.status_code, content={"detail": exc.details()}, headers=exc.headers
    )


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """pydantic's errors without the echoed input: it may be NaN (not valid JSON) or a
    100,000-value history."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """404 for unknown routes, 405, and the body limits' 413 and 422: same shape as the rest."""
    assert isinstance(exc, HTTPException)
    loc, kind = [], {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    if isinstance(exc, BodyRefused):
        loc, kind = ["body"], exc.kind
    detail = [{"loc": loc, "msg": str(exc.detail), "type": kind or "http_error"}]
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return JSONResponse(status_code=exc.status_code, content={"detail": detail}, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path. Starlette's 405 names only the first
    route's: POST for /retrain, though GET /retrain exists too."""
    methods: set[str] = set()
    for route in every_route(request.app):
        if route.matches({**request.scope, "method": ""})[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def every_route(app: FastAPI) -> list[BaseRoute]:
    """The app's routes, those of included routers among them."""
    found, routes = [], list(app.router.routes)
    while routes:
        route = routes.pop()
        if hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
            routes += route.original_router.routes
        else:
            found.append(route)
    return found


async def _handle_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Connection refused, dropped or pool exhausted: a 503 the client may retry, not a 500.
    (Bad SQL or a violated constraint is a bug, and stays a 500.)"""
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    detail = [
        {"loc": [], "msg": f"database unavailable: {first_line}", "type": "database_unavailable"}
    ]
    return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "2"})


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _handle_database_unavailable)
    app.add_exception_handler(PoolTimeout, _handle_database_unavailable)
    app.add_exception_handler(ServiceError, _handle_service_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_exception)
