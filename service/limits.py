"""Request body size limit, enforced before the app reads the body (chunked bodies too).

Starlette ships a RequestBodyLimitMiddleware, but its 413 is a fixed "Content Too Large" text;
this one names the limit and the setting, in the api's error shape.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large_message(limit: int) -> str:
    return f"request body exceeds {limit} bytes (FORECAST_MAX_BODY_BYTES)"


class BodySizeLimit:
    """413 when Content-Length is over the limit; for bodies without one (chunked), 413 as soon
    as the bytes received pass it, so an endless body is never buffered whole."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await _reject(send, limit)
                return
            # uvicorn and h11 never deliver more than a declared length: nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the app's body read. It must be an HTTPException: FastAPI
                    # turns anything else raised there into a 400.
                    raise HTTPException(413, too_large_message(limit))
            return message

        await self.app(scope, limited_receive, send)


async def _reject(send: Send, limit: int) -> None:
    body = (
        b'{"detail":[{"loc":["body"],"msg":"' + too_large_message(limit).encode() + b'",'
        b'"type":"payload_too_large"}]}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
