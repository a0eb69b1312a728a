"""FastAPI dependencies: everything heavy lives on app.state (built in the lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.errors import ModelNotReady
from service.model_set import ModelSet


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_models(request: Request) -> ModelSet:
    models: ModelSet = request.app.state.models
    if not models.models:
        raise ModelNotReady(f"no model is loaded: {models.refused}")
    return models


def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelSet, Depends(get_models)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
