"""The busiest route answered before FastAPI's inner layers.

``POST /forecast`` is most of the api's traffic and each request is small, so the layers every
request passes cost a noticeable share of its time. This middleware sits innermost of the
api's own (inside RequestContext and BodyLimits, which still id, time, count and limit it) and
calls the endpoint directly, skipping FastAPI's exception middleware, its exit-stack
middleware, the router and Starlette's per-route wrapper. A plain endpoint reads the ASGI scope
and its body messages itself and returns the JSON of its 200 answer, which is sent as
Starlette's ``Response`` would send it: building the ``Request``, its ``Headers`` and the
``Response`` cost about 6 us of a forecast's time on the event loop. Errors are answered by the
same handlers the app registers (``app.exception_handlers``); anything unhandled propagates to
RequestContext, which answers the 500 as for every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# Answers 200 with the JSON it returns, or raises.
JsonEndpoint = Callable[[Scope, Receive], Awaitable[bytes]]
Handler = Callable[[Request, Exception], Awaitable[Response]]
JSON = b"application/json"


@dataclass(frozen=True)
class PlainRoute:
    path: str
    method: str
    endpoint: JsonEndpoint


class PlainRoutes:
    def __init__(self, app: ASGIApp, routes: list[PlainRoute]) -> None:
        self.app = app
        self.endpoints = {(route.method, route.path): route.endpoint for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.endpoints.get((scope["method"], scope["path"]))
            if scope["type"] == "http"
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["endpoint"] = endpoint  # RequestContext's route label
        try:
            body = await endpoint(scope, receive)
        except Exception as exc:
            handler = _handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive, send), exc)
            await response(scope, receive, send)
            return
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", JSON)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def header_values(scope: Scope, *names: bytes) -> list[str | None]:
    """The first value of each named header (lowercase names, as ASGI servers give them), as
    Starlette's ``Headers.get`` reads it; None for one not sent."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        if key in names and key not in found:
            found[key] = value.decode("latin-1")
    return [found.get(name) for name in names]


async def read_body(receive: Receive) -> bytes:
    """The whole request body, as Starlette's ``Request.body`` reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _handler_for(handlers: dict[object, Handler], exc: Exception) -> Handler | None:
    """The handler registered for the exception's class or its nearest base, as Starlette's
    exception middleware picks it."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
