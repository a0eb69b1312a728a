"""The models the api serves: versions, where they came from, their backtest metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.auth import READ
from service.deps import ModelsDep
from service.errors import ModelNotFound
from service.inference import Forecaster
from service.model_set import ModelSet
from service.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/models", tags=["models"], dependencies=[READ])


def model_info(forecaster: Forecaster) -> ModelInfo:
    m = forecaster.manifest
    return ModelInfo(
        name=m.name,
        version=m.version,
        frequency=m.frequency,
        input_size=m.input_size,
        horizon=m.horizon,
        quantiles=m.quantiles,
        provider=forecaster.provider,
        source=forecaster.source,
        loaded_at=forecaster.loaded_at,
        metrics=m.metrics,
    )


@router.get("", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    """Every loaded model, and every bundle that was refused with the reason."""
    models: ModelSet = request.app.state.models
    return ModelList(
        models=[model_info(f) for _, f in sorted(models.models.items())],
        refused=models.refused,
    )


@router.get("/{name}", response_model=ModelInfo, responses={404: {"description": "Unknown."}})
async def get_model(name: str, models: ModelsDep) -> ModelInfo:
    """Version, source, loaded_at and backtest metrics of one model."""
    if name not in models.models:
        raise ModelNotFound(
            f"no model named {name!r}; loaded: {sorted(models.models)}", ("path", "name")
        )
    return model_info(models.models[name])
