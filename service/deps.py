"""FastAPI dependencies: everything heavy lives on app.state (built in the lifespan)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import State

from service.config import Settings
from service.errors import ModelNotReady
from service.model_set import ModelSet
from service.serving import Serving

logger = logging.getLogger(__name__)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def loaded_models(state: State) -> ModelSet:
    models: ModelSet = state.models
    if not models.models:
        raise ModelNotReady(f"no model is loaded: {models.refused}")
    return models


async def get_models(request: Request) -> ModelSet:
    return loaded_models(request.app.state)


async def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        # This runs once the answer has started: what failed here can no longer become a
        # 503, and raising would cut the connection mid-answer. A route commits before it
        # answers, so all that is left is the rollback-on-close of a connection the database
        # may have dropped meanwhile (the pool discards it).
        try:
            session.close()
        except SQLAlchemyError as exc:
            logger.warning("closing a database session failed after the answer: %s", exc)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelSet, Depends(get_models)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
ServingDep = Annotated[Serving, Depends(get_serving)]
