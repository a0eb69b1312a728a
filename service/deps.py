"""FastAPI dependencies: everything heavy lives on app.state (built in the lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.errors import ModelNotReady
from service.model_set import ModelSet
from service.serving import Serving


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_models(request: Request) -> ModelSet:
    models: ModelSet = request.app.state.models
    if not models.models:
        raise ModelNotReady(f"no model is loaded: {models.refused}")
    return models


async def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelSet, Depends(get_models)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
ServingDep = Annotated[Serving, Depends(get_serving)]
