# syntax=docker/dockerfile:1
# Three images from one file (docker-compose.yml builds each):
#   api     FastAPI + onnxruntime + the MLflow client; no torch. Also runs migrate and schedule.
#   worker  CPU torch and the training package: runs retrain jobs.
#   mlflow  the MLflow tracking server and model registry.
# Dependencies are installed before the source is copied, so a source edit rebuilds only the
# last layers. Every image runs as an unprivileged user with an exec-form CMD (signals reach
# the process).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN useradd --create-home --uid 10001 app \
    && mkdir /app/var \
    && chown app /app/var

# The api's dependencies. ONNXRUNTIME=onnxruntime-gpu builds the CUDA image (same import
# name; run it with a GPU reservation, see docker-compose.gpu.yml).
FROM base AS api-deps
ARG ONNXRUNTIME=onnxruntime
COPY pyproject.toml constraints.txt README.md ./
# A stub package lets pip resolve the project's dependencies before the source exists.
RUN mkdir service training \
    && touch service/__init__.py training/__init__.py \
    && pip install --constraint constraints.txt '.[serve]' \
    && if [ "$ONNXRUNTIME" != "onnxruntime" ]; then \
        pip uninstall --yes onnxruntime && pip install --constraint constraints.txt "$ONNXRUNTIME"; \
    fi \
    && pip uninstall --yes lstm-forecast-service \
    && rm -r service training

FROM api-deps AS api
COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY models/ models/
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready').status != 200)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]

# The worker's dependencies: CPU torch from PyTorch's own index first (PyPI's Linux wheel
# carries CUDA, gigabytes), pinned like constraints.txt, then the training extra.
FROM base AS worker-deps
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir service training \
    && touch service/__init__.py training/__init__.py \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --constraint constraints.txt '.[train]' \
    && pip uninstall --yes lstm-forecast-service \
    && rm -r service training

FROM worker-deps AS worker
COPY service/ service/
COPY training/ training/
COPY models/ models/
USER 10001
CMD ["python", "-m", "training", "worker"]

FROM base AS mlflow
RUN pip install mlflow==3.17.2 'psycopg[binary]==3.3.9'
USER 10001
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/health').status != 200)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
