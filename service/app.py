"""The application factory. ``create_app(settings)`` is the one way to build the api."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.auth import resolve_admin_token
from service.config import Settings
from service.db.session import build_engine, build_sessionmaker
from service.errors import register_error_handlers
from service.limits import BodySizeLimit
from service.model_set import ModelSet, load_model_set
from service.registry import RegistryWatcher
from service.routes import forecast, health, models, retrain, series

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Plain-text logs for the api's own loggers; a no-op when the host already set up logging
    (pytest, or an embedding application). Runs in every uvicorn worker process."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


async def follow_registry(app: FastAPI, watcher: RegistryWatcher) -> None:
    """Check the champion aliases now and every registry_poll_s; swap in what passes. The
    registry calls, downloads and session builds run in a thread, off the event loop."""
    while True:
        try:
            swapped = await asyncio.to_thread(watcher.check, app.state.models)
        except Exception:  # the registry is down or answers nonsense: keep serving, try again
            logger.exception("could not check the model registry")
        else:
            if swapped is not None:
                app.state.models = swapped  # one assignment: a request sees old or new
        await asyncio.sleep(watcher.settings.registry_poll_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Bundles that can't be served are refused and logged; with none loaded the process
        # stays up (live) but not ready, with the reasons in /health/ready, so an orchestrator
        # reports it instead of crash-looping.
        app.state.models = load_model_set(
            settings.models_dir,
            settings.provider,
            settings.intra_op_threads,
            settings.default_models,
        )
        # The engine connects lazily: the api starts (and reports why it isn't ready) even
        # while the database is down. The schema comes from `python -m service migrate`.
        engine = build_engine(settings.database_url)
        app.state.engine, app.state.sessions = engine, build_sessionmaker(engine)
        logger.info("database: %s", engine.url.render_as_string(hide_password=True))
        app.state.admin_token = resolve_admin_token(settings)
        watcher = None
        if settings.registry_poll_s > 0:
            watcher = asyncio.create_task(follow_registry(app, RegistryWatcher(settings)))
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        engine.dispose()

    app = FastAPI(
        title="LSTM forecasting service",
        version="0.1.0",
        description="Forecasts from global LSTM models served with onnxruntime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.models = ModelSet(models={}, refused={"": "starting up"})
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(forecast.router)
    app.include_router(series.router)
    app.include_router(retrain.router)
    app.include_router(models.router)
    return app
