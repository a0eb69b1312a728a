"""The busiest route answered before FastAPI's inner layers.

``POST /forecast`` is most of the api's traffic and each request is small, so the layers every
request passes cost a noticeable share of its time. This middleware sits innermost of the
api's own (inside RequestContext and BodyLimits, which still id, time, count and limit it) and
calls the endpoint directly, skipping FastAPI's exception middleware, its exit-stack
middleware, the router and Starlette's per-route wrapper. Errors are answered by the same
handlers the app registers (``app.exception_handlers``); anything unhandled propagates to
RequestContext, which answers the 500 as for every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class PlainRoutes:
    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.endpoints: dict[tuple[str, str], Endpoint] = {
            (method, route.path): route.endpoint
            for route in routes
            for method in route.methods or ()
            if method != "HEAD"
        }

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
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = _handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(handlers: dict[object, Handler], exc: Exception) -> Handler | None:
    """The handler registered for the exception's class or its nearest base, as Starlette's
    exception middleware picks it."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
