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
    """The configured token, else the one stored in the token file (created if missing)."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.admin_token_file
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        # O_EXCL: several uvicorn workers may start at once; the first one writes, the rest read.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    logger.warning("FORECAST_ADMIN_TOKEN is unset: generated an admin token in %s", path)
    return token


def _read(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise FileNotFoundError(path)
    return token


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <admin token>``."""
    expected: str = request.app.state.admin_token
    given = credentials.credentials if credentials is not None else ""
    # compare_digest: the time taken does not reveal how much of the token was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(
            "this route needs the admin bearer token (Authorization: Bearer <token>; "
            "FORECAST_ADMIN_TOKEN)",
            ("header", "authorization"),
        )


AdminDep = Annotated[None, Depends(require_admin)]
