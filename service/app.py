"""The application factory. ``create_app(settings)`` is the one way to build the api."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.bundle import BundleError
from service.config import Settings
from service.db.session import build_engine, build_sessionmaker
from service.errors import register_error_handlers
from service.inference import load_forecaster
from service.limits import BodySizeLimit
from service.routes import forecast, health, series

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Plain-text logs for the api's own loggers; a no-op when the host already set up logging
    (pytest, or an embedding application). Runs in every uvicorn worker process."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A bundle that can't be served leaves the process up (live) but not ready, with the
        # reason in /health/ready, so an orchestrator reports it instead of crash-looping.
        try:
            app.state.forecaster = load_forecaster(
                str(settings.bundle_dir), settings.provider, settings.intra_op_threads
            )
            app.state.model_error = None
        except BundleError as exc:
            logger.error("model not loaded: %s", exc)
            app.state.forecaster, app.state.model_error = None, str(exc)
        # The engine connects lazily: the api starts (and reports why it isn't ready) even
        # while the database is down. The schema comes from `python -m service migrate`.
        engine = build_engine(settings.database_url)
        app.state.engine, app.state.sessions = engine, build_sessionmaker(engine)
        logger.info("database: %s", engine.url.render_as_string(hide_password=True))
        yield
        engine.dispose()

    app = FastAPI(
        title="LSTM forecasting service",
        version="0.1.0",
        description="Forecasts from global LSTM models served with onnxruntime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.forecaster, app.state.model_error = None, "starting up"
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(forecast.router)
    app.include_router(series.router)
    return app
