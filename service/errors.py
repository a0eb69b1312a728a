"""Domain errors and the one handler that turns them into HTTP responses.

Every error body has FastAPI's validation shape, ``{"detail": [{"loc", "msg", "type"}]}``,
so a client parses one format whether pydantic or the service refused the request.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

Loc = Sequence[str | int]


class ServiceError(Exception):
    status_code = 400
    type = "service_error"

    def __init__(self, msg: str, loc: Loc = ()) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = list(loc)

    def to_detail(self) -> dict[str, object]:
        return {"loc": self.loc, "msg": self.msg, "type": self.type}


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


class LimitExceeded(InvalidInput):
    type = "limit_exceeded"


class ModelNotReady(ServiceError):
    status_code = 503
    type = "model_not_ready"


async def _handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(status_code=exc.status_code, content={"detail": [exc.to_detail()]})


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """pydantic's errors without the echoed input: it may be NaN (not valid JSON) or a
    100,000-value history."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _handle_service_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
