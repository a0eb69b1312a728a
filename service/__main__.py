"""Command line for the api: ``python -m service serve [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys

import uvicorn

from service.config import Settings

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the api with uvicorn")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1)
    commands.add_parser("migrate", help="upgrade the database (DATABASE_URL) to the latest schema")
    args = parser.parse_args(argv)

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper())
    if args.command == "migrate":
        from service.db.migrate import upgrade

        upgrade(settings.database_url)
        return
    worker = start_embedded_worker(settings)
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=20,
        )
    finally:
        if worker is not None:
            worker.terminate()  # SIGTERM: it gives a running job back to the queue
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def start_embedded_worker(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Embedded mode: one retrain worker as a child process (training never runs in the api's
    process), if this install has the training package's dependencies."""
    if not settings.embedded_worker:
        return None
    if importlib.util.find_spec("torch") is None:
        logger.warning("no retrain worker: torch is not installed (install '.[train]')")
        return None
    command = [sys.executable, "-m", "training", "worker", "--parent-pid", str(os.getpid())]
    logger.info("starting an embedded retrain worker: %s", " ".join(command))
    return subprocess.Popen(command)


if __name__ == "__main__":
    main()
