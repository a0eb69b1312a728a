# syntax=docker/dockerfile:1
# Minimal serving image for the walking skeleton; issue 6 adds the worker target, the GPU
# build argument and the compose stack around it.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The api: onnxruntime + FastAPI, no torch. Dependencies first so source edits reuse the layer.
FROM base AS api
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir service training \
    && touch service/__init__.py training/__init__.py \
    && pip install --constraint constraints.txt '.[serve]' \
    && pip uninstall --yes lstm-forecast-service
COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY models/ models/
# var/ holds the embedded SQLite database when DATABASE_URL is unset.
RUN useradd --create-home --uid 10001 app && mkdir var && chown app var
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready').status != 200)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
