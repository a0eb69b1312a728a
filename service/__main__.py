"""Command line for the api: ``python -m service serve [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import os

import uvicorn

from service.config import Settings


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
    if args.command == "migrate":
        from service.db.migrate import upgrade

        upgrade(settings.database_url)
        return
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
