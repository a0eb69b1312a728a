"""Bearer-token auth for admin routes.

The admin token comes from ``FORECAST_ADMIN_TOKEN``. Without it (embedded mode) the api
generates one at first start and keeps it in ``FORECAST_ADMIN_TOKEN_FILE`` (mode 0600), so a
laptop gets a working ``/retrain`` with nothing to configure and nothing guessable.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, ClassVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import ServiceError

logger = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="FORECAST_ADMIN_TOKEN")


class Unauthorized(ServiceError):
    status_code = 401
    type = "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


def resolve_admin_token(settings: Settings) -> str:
    """The configured token, else the one stored in the token file (created if missing).

    A blank FORECAST_ADMIN_TOKEN counts as unset: an empty token would match a request that
    sends none (compose's ``${VAR}`` of an unset variable is the empty string)."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        return settings.admin_token.get_secret_value().strip()
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


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <admin token>``."""
    expected: str = request.app.state.admin_token
    given = credentials.credentials if credentials is not None else ""
    # compare_digest: the time taken does not reveal how much of the token was right.
    if not (given and expected and hmac.compare_digest(given.encode(), expected.encode())):
        raise Unauthorized(
            "this route needs the admin bearer token (Authorization: Bearer <token>; "
            "FORECAST_ADMIN_TOKEN)",
            ("header", "authorization"),
        )


AdminDep = Annotated[None, Depends(require_admin)]
