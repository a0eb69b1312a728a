"""``python -m training worker`` and ``python -m training retrain``: the retrain queue from the
command line (cron jobs that don't go through HTTP use ``retrain --wait``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from service.config import Settings
from service.db import jobs
from service.db.session import build_engine, build_sessionmaker
from service.schemas import RetrainRequest

EXIT_FAILED, EXIT_TIMEOUT = 1, 3


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = commands.add_parser("worker", help="claim and run retrain jobs from the database")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--parent-pid", type=int, help="exit when this process (the embedding api) is gone"
    )
    retrain = commands.add_parser(
        "retrain", help="queue a retrain job (as POST /retrain does) and optionally wait for it"
    )
    retrain.add_argument("--model", required=True, help="model name, e.g. m3_monthly")
    retrain.add_argument("--series", help="comma-separated stored series (default: all)")
    retrain.add_argument("--mode", choices=["finetune", "scratch"], default="finetune")
    retrain.add_argument("--promote", choices=["if_better", "always", "never"], default="if_better")
    retrain.add_argument("--max-epochs", type=int, help="override the champion's setting")
    retrain.add_argument("--learning-rate", type=float, help="override the champion's setting")
    retrain.add_argument("--wait", action="store_true", help="wait until the job has finished")
    retrain.add_argument("--timeout-s", type=float, default=3600.0, help="with --wait")


def run_worker(args: argparse.Namespace) -> int:
    from training.worker import Worker

    if args.parent_pid is not None:
        os.nice(10)  # embedded beside the api: forecasts first, training with what is left
    Worker(Settings(), parent_pid=args.parent_pid).run(once=args.once)
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    """Queue (or join) the model's retrain; with --wait, exit 0 when it succeeded or was
    rejected by the policy, 1 when it failed, 3 on timeout. Prints the job as JSON."""
    overrides = {"max_epochs": args.max_epochs, "learning_rate": args.learning_rate}
    request = RetrainRequest.model_validate(
        {
            "model": args.model,
            "series": args.series.split(",") if args.series else None,
            "mode": args.mode,
            "promote": args.promote,
            "overrides": {k: v for k, v in overrides.items() if v is not None} or None,
        }
    )
    params = request.model_dump(exclude={"model"}, exclude_none=True)
    settings = Settings()
    sessions = build_sessionmaker(build_engine(settings.database_url))
    with sessions() as session:
        job, created = jobs.create_job(
            session,
            model_name=args.model,
            params=params,
            max_attempts=settings.retrain_max_attempts,
        )
    print(f"{'queued' if created else 'already queued or running'}: job {job.id}", file=sys.stderr)
    deadline = time.monotonic() + args.timeout_s
    while args.wait and job.status in ("queued", "running"):
        if time.monotonic() > deadline:
            print(f"job {job.id} still {job.status} after {args.timeout_s} s", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(1.0)
        with sessions() as session:
            job = jobs.get_job(session, job_id=job.id)
    print(
        json.dumps(
            {
                "id": job.id,
                "model": job.model_name,
                "status": job.status,
                "error": job.error,
                "model_version": job.model_version,
                **(job.result or {}),
            },
            default=str,
        )
    )
    return EXIT_FAILED if job.status == "failed" else 0
