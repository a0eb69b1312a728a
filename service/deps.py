"""FastAPI dependencies: everything heavy lives on app.state (built in the lifespan)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.errors import ModelNotReady
from service.inference import Forecaster


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_forecaster(request: Request) -> Forecaster:
    forecaster: Forecaster | None = request.app.state.forecaster
    if forecaster is None:
        raise ModelNotReady(f"no model is loaded: {request.app.state.model_error}")
    return forecaster


def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ForecasterDep = Annotated[Forecaster, Depends(get_forecaster)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
