"""Command line for the api: ``python -m service serve [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import threading

import uvicorn

from service.config import Settings
from service.observability import configure_logging

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the api with uvicorn")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1)
    commands.add_parser("migrate", help="upgrade the database (DATABASE_URL) to the latest schema")
    commands.add_parser(
        "schedule", help="call POST /retrain on FORECAST_SCHEDULE_CRON (scheduled retrains)"
    )
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        from service.db.migrate import upgrade

        upgrade(settings.database_url)
        return
    if args.command == "schedule":
        from service.scheduler import run

        run(settings)
        return
    worker = EmbeddedWorker.start(settings)
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            # Logging is set up by the app (JSON, with request ids), in each worker process;
            # service.access replaces uvicorn's access log.
            log_config=None,
            access_log=False,
            # X-Forwarded-For/-Proto are trusted only from the proxies FORWARDED_ALLOW_IPS
            # names (uvicorn reads it). Unset, none is trusted and the middleware, 3% of a
            # forecast's time, is left out.
            proxy_headers="FORWARDED_ALLOW_IPS" in os.environ,
            timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        )
    finally:
        if worker is not None:
            worker.stop()


class EmbeddedWorker:
    """Embedded mode: one retrain worker as a child process (training never runs in the api's
    process), restarted if it dies, stopped with the api. It runs at a lower CPU priority so
    that training on a laptop's few cores does not starve the forecasts."""

    RESTART_DELAY_S = 5.0

    def __init__(self) -> None:
        self.command = [
            sys.executable,
            "-m",
            "training",
            "worker",
            "--parent-pid",
            str(os.getpid()),
        ]
        self.stopping = threading.Event()
        self.process = self._spawn()
        threading.Thread(target=self._supervise, name="embedded-worker", daemon=True).start()

    @classmethod
    def start(cls, settings: Settings) -> EmbeddedWorker | None:
        if not settings.embedded_worker:
            return None
        if importlib.util.find_spec("torch") is None:
            logger.warning("no retrain worker: torch is not installed (install '.[train]')")
            return None
        return cls()

    def _spawn(self) -> subprocess.Popen[bytes]:
        logger.info("starting an embedded retrain worker: %s", " ".join(self.command))
        return subprocess.Popen(self.command)

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            code = self.process.wait()
            if self.stopping.wait(self.RESTART_DELAY_S):
                return
            logger.error("the embedded retrain worker exited with %s; restarting it", code)
            self.process = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        self.process.terminate()  # SIGTERM: it gives a running job back to the queue
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


if __name__ == "__main__":
    main()
