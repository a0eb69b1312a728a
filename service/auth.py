"""Bearer-token auth with two scopes.

- ``read`` (``FORECAST_READ_TOKEN``): forecasts, and reads of series, models and retrain jobs.
- ``admin`` (``FORECAST_ADMIN_TOKEN``): everything, including ingest, delete and retrain.

Auth is always on. Without an admin token configured (embedded mode) the api generates one at
first start and keeps it in ``FORECAST_ADMIN_TOKEN_FILE`` (mode 0600), so a laptop gets a
working api with nothing to configure and nothing guessable. Without a read token, the read
routes take the admin token only. ``/health/*`` stays open; ``/metrics`` follows
``FORECAST_METRICS``.

No token, or a token that matches neither, is a 401; the read token on an admin route is a 403.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from service.config import Settings
from service.errors import ServiceError

logger = logging.getLogger(__name__)

Scope = Literal["read", "admin"]
READ_SCHEME, ADMIN_SCHEME = "readToken", "adminToken"

# The two schemes name each route's scope in the OpenAPI document (both are bearer tokens);
# the checks below read the header themselves.
read_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=READ_SCHEME,
    description="FORECAST_READ_TOKEN, or FORECAST_ADMIN_TOKEN",
)
admin_bearer = HTTPBearer(
    auto_error=False, scheme_name=ADMIN_SCHEME, description="FORECAST_ADMIN_TOKEN"
)


class Unauthorized(ServiceError):
    status_code = 401
    type = "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403
    type = "forbidden"


@dataclass(frozen=True)
class Tokens:
    """The tokens this api accepts, as bytes for ``hmac.compare_digest``."""

    admin: bytes
    read: bytes | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        read = _configured(settings.read_token)
        return cls(admin=resolve_admin_token(settings).encode(), read=read.encode() or None)

    def scope_of(self, authorization: str | None) -> Scope | None:
        """The scope a request's ``Authorization`` header grants; None for none or a wrong one.

        compare_digest: the time taken does not reveal how much of a token was right. Both
        tokens are always compared, so neither does the time taken reveal which one matched.
        """
        if not authorization:
            return None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        candidate = given.strip().encode()
        is_admin = hmac.compare_digest(candidate, self.admin)
        is_read = self.read is not None and hmac.compare_digest(candidate, self.read)
        if is_admin:
            return "admin"
        return "read" if is_read else None

    def check(self, authorization: str | None, needed: Scope) -> None:
        """Raise 401 or 403 unless the header grants ``needed``."""
        granted = self.scope_of(authorization)
        if granted is None:
            which = NEEDS[needed]
            problem = "the token sent is not valid" if authorization else "none was sent"
            raise Unauthorized(
                f"this route needs the {needed} scope: Authorization: Bearer <{which}>; {problem}",
                ("header", "authorization"),
            )
        if needed == "admin" and granted != "admin":
            raise Forbidden(
                "this route needs the admin scope (FORECAST_ADMIN_TOKEN); the read token "
                "only reads and forecasts",
                ("header", "authorization"),
            )


NEEDS: dict[Scope, str] = {
    "read": "FORECAST_READ_TOKEN or FORECAST_ADMIN_TOKEN",
    "admin": "FORECAST_ADMIN_TOKEN",
}


def check_scope(request: Request, needed: Scope) -> None:
    """For routes outside FastAPI's dependency system (the plain Starlette /forecast)."""
    tokens: Tokens = request.app.state.tokens
    tokens.check(request.headers.get("authorization"), needed)


async def require_read(request: Request, _: object = Depends(read_bearer)) -> None:
    check_scope(request, "read")


async def require_admin(request: Request, _: object = Depends(admin_bearer)) -> None:
    check_scope(request, "admin")


READ = Depends(require_read)
ADMIN = Depends(require_admin)


def _configured(secret: SecretStr | None) -> str:
    """A setting's token; blank counts as unset: an empty token would match a request that
    sends none (compose's ``${VAR}`` of an unset variable is the empty string)."""
    return "" if secret is None else secret.get_secret_value().strip()


def resolve_admin_token(settings: Settings) -> str:
    """The configured token, else the one stored in the token file (created if missing)."""
    configured = _configured(settings.admin_token)
    if configured:
        return configured
    path = settings.admin_token_file
    token = _read(path)
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        # The file appears whole or not at all. Several uvicorn workers may start at once:
        # link() fails for all but the first, and they read the winner's token.
        if path.exists() and not _read(path):
            path.unlink()  # empty: a crash between create and write, long ago
        os.link(staging, path)
        logger.warning("FORECAST_ADMIN_TOKEN is unset: generated an admin token in %s", path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    return _read(path)


def _read(path: Path) -> str:
    """The token in the file; empty when there is no file or nothing in it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
