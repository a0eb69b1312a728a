"""Limits on request bodies, enforced before the app reads them: size (413, chunked bodies
too) and JSON nesting depth (422), each naming the limit and its setting.

Starlette ships a RequestBodyLimitMiddleware, but its 413 is a fixed "Content Too Large" text.
The depth is checked here, on the raw bytes as they arrive, because a parser is where deep
nesting does its harm: Python's json recurses once per level.
"""

from __future__ import annotations

import re

import numpy as np
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSV_TYPES = ("text/csv", "application/csv")


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return content_type.split(";")[0].strip().lower()


def too_large_message(limit: int) -> str:
    return f"request body exceeds {limit} bytes (FORECAST_MAX_BODY_BYTES)"


def too_deep_message(limit: int) -> str:
    return f"JSON body is nested deeper than {limit} levels (FORECAST_MAX_JSON_DEPTH)"


# A complete JSON string, escapes included; what is left of a chunk once these are removed has
# brackets only as structure.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# The rest of a string begun in an earlier chunk, up to and including its closing quote.
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')
# +1 for an opening bracket, -1 for a closing one, as signed bytes for numpy.
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


class JsonDepth:
    """The deepest nesting of a JSON text fed in chunks, without parsing it: strings are cut
    out (their brackets don't count), then the brackets are counted. A string or an escape
    may span chunks. Malformed text is the parser's to refuse later; this only counts."""

    def __init__(self) -> None:
        self.depth = 0
        self.deepest = 0
        self.in_string = False
        self.escaped = False  # the chunk ended inside a string on an unpaired backslash

    def feed(self, chunk: bytes) -> int:
        """Take the next chunk; return the deepest nesting seen so far."""
        if not chunk:  # nothing to count, and an escape pending stays pending
            return self.deepest
        kept = chunk.translate(None, _NOT_STRUCTURE)
        if b"\\" in kept or self.escaped:
            return self._count(self._outside_strings(chunk))
        # No escapes: strings are what lies between quote pairs, found by translate and split
        # at C speed (an upload of 100,000 JSON rows has 400,000 quotes for the regex).
        parts = kept.split(b'"')
        outside = parts[1::2] if self.in_string else parts[0::2]
        if len(parts) % 2 == 0:  # an odd number of quotes: a string opens or closes
            self.in_string = not self.in_string
        return self._count(b"".join(outside))

    def _outside_strings(self, chunk: bytes) -> bytes:
        """The chunk without its strings (or the parts of strings begun or going on past it)."""
        start = 0
        if self.in_string:
            start = 1 if self.escaped else 0
            self.escaped = False
            end = _STRING_REST.match(chunk, start)
            if end is None:  # the string goes on past this chunk
                self.escaped = _ends_in_escape(chunk[start:])
                return b""
            start = end.end()
            self.in_string = False
        outside = _STRING.sub(b"", chunk[start:] if start else chunk)
        quote = outside.find(b'"')
        if quote >= 0:  # a string opens and does not close in this chunk
            self.in_string = True
            self.escaped = _ends_in_escape(outside[quote + 1 :])
            outside = outside[:quote]
        return outside

    def _count(self, text: bytes) -> int:
        brackets = text.translate(None, _NOT_BRACKETS)
        if brackets:
            steps = np.cumsum(_STEP[np.frombuffer(brackets, dtype=np.uint8)], dtype=np.int64)
            self.deepest = max(self.deepest, self.depth + int(steps.max()))
            self.depth += int(steps[-1])
        return self.deepest


class DepthGuard:
    """Whether a JSON text fed in chunks nests deeper than ``limit``, counting only when it
    could: a text with at most ``limit`` opening brackets can't. Until it has more, chunks are
    only counted (``bytes.count``, C speed) and kept by reference; then the JsonDepth count
    starts from the first. A forecast body has about four: the serving benchmark lost 5% of
    its throughput to counting every body."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.openers = 0
        self.held: list[bytes] = []
        self.depth: JsonDepth | None = None

    def exceeded(self, chunk: bytes) -> bool:
        if self.depth is None:
            self.openers += chunk.count(b"[") + chunk.count(b"{")
            if self.openers <= self.limit:
                self.held.append(chunk)
                return False
            self.depth = JsonDepth()
            for held in self.held:
                self.depth.feed(held)
            self.held = []
        return self.depth.feed(chunk) > self.limit


class BodyRefused(HTTPException):
    """Raised inside the app's body read. It must be an HTTPException: FastAPI turns anything
    else raised there into a 400."""

    def __init__(self, status_code: int, detail: str, kind: str) -> None:
        super().__init__(status_code, detail)
        self.kind = kind


def _ends_in_escape(text: bytes) -> bool:
    """Whether string content ends on a backslash that escapes the next chunk's first byte."""
    return (len(text) - len(text.rstrip(b"\\"))) % 2 == 1


class BodyLimits:
    """413 when Content-Length is over the size limit; for bodies without one (chunked), 413 as
    soon as the bytes received pass it, so an endless body is never buffered whole. 422 as
    soon as a JSON body nests deeper than the depth limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared, content_type = None, None
        for key, value in scope["headers"]:
            # The first of each, as Starlette's Headers.get (and so every route) reads them.
            if key == b"content-length" and declared is None:
                declared = value
            elif key == b"content-type" and content_type is None:
                content_type = value
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, 413, too_large_message(limit), "payload_too_large")
            return
        # Every body but CSV is counted as JSON: what a route reads as JSON must be checked,
        # and a body that is not JSON at all has no brackets to count.
        media = media_type((content_type or b"").decode("latin-1"))
        depth = None if media in CSV_TYPES else DepthGuard(self.max_json_depth)
        # Read as JSON by the routes. JSON between systems is UTF-8 (RFC 8259); Python's parser
        # also takes UTF-16 and UTF-32, whose bytes the depth count can't read. A NUL byte
        # can't be in UTF-8 JSON (in a string it is written \u0000): refuse it.
        utf8_only = media == "" or media == "application/json" or media.endswith("+json")
        received = 0
        max_depth = self.max_json_depth

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                # Counted even with a Content-Length: not every HTTP parser holds a body to it.
                if received > limit:
                    raise BodyRefused(413, too_large_message(limit), "payload_too_large")
                if utf8_only and b"\x00" in body:
                    raise BodyRefused(
                        422, "a JSON body is UTF-8 text; it holds a NUL byte", "json_invalid"
                    )
                if depth is not None and depth.exceeded(body):
                    raise BodyRefused(422, too_deep_message(max_depth), "limit_exceeded")
            return message

        await self.app(scope, limited_receive, send)


async def _reject(send: Send, status: int, message: str, kind: str) -> None:
    body = b'{"detail":[{"loc":["body"],"msg":"' + message.encode() + b'","type":"' + kind.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body + b'"}]}'})
