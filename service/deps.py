"""FastAPI dependencies: everything heavy lives on app.state (built in the lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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


SettingsDep = Annotated[Settings, Depends(get_settings)]
ForecasterDep = Annotated[Forecaster, Depends(get_forecaster)]
