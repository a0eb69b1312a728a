"""``python -m service schedule``: scheduled retrains, as a client of ``POST /retrain``.

On every time of a cron expression it posts the configured body to the api with the admin
token. The api answers 202 (queued) or 200 (a retrain of that model is already queued or
running), so a schedule that fires while a retrain runs queues nothing twice. Cron parsing is
APScheduler's; five fields (minute hour day month weekday) or six with seconds first.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from types import FrameType

from apscheduler.triggers.cron import CronTrigger

from service.auth import resolve_admin_token
from service.config import Settings

logger = logging.getLogger(__name__)


DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_weekdays(field: str) -> str:
    """A cron weekday field (0 or 7 = Sunday, 1 = Monday ... 6; names; ranges, steps, lists)
    as APScheduler's day names. APScheduler numbers days from Monday = 0, so a cron "1" passed
    through unchanged would mean Tuesday."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first, last = _day(low), _day(high or low)
            if high and last == 0 and first > 0:
                last = 7  # "5-7" and "fri-sun" run to Sunday
        days.update(d % 7 for d in range(first, last + 1, int(step or 1)))
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def _day(token: str) -> int:
    return DAY_NAMES.index(token[:3]) if token[:3] in DAY_NAMES else int(token) % 7


def trigger(expression: str) -> CronTrigger:
    """Five fields (minute hour day month weekday), or six with seconds first (as in Quartz
    and Spring); weekdays as cron numbers them."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"a cron expression has 5 or 6 fields, not {len(fields)}: {expression!r}")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        second=second,
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=cron_weekdays(weekday),
        timezone=UTC,
    )


def post_retrain(settings: Settings, token: str) -> tuple[int, dict[str, object]]:
    """One call of POST /retrain; (status, body). Errors come back as (0, {"error": ...})."""
    request = urllib.request.Request(
        settings.schedule_api_url.rstrip("/") + "/retrain",
        data=settings.schedule_body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:2000]}
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return 0, {"error": str(exc)}


def run(settings: Settings) -> None:
    if not settings.schedule_cron:
        raise SystemExit("FORECAST_SCHEDULE_CRON is empty: nothing to schedule")
    when = trigger(settings.schedule_cron)
    token = resolve_admin_token(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    previous = None
    while not stop.is_set():
        now = datetime.now(UTC)
        upcoming = when.get_next_fire_time(previous, now)
        if upcoming is None:
            logger.info("the schedule %r has no more times", settings.schedule_cron)
            return
        logger.info("next retrain call at %s", upcoming.isoformat())
        if stop.wait(max(0.0, (upcoming - now).total_seconds())):
            return
        previous = upcoming
        status, body = post_retrain(settings, token)
        if status in (200, 202):
            logger.info(
                "POST /retrain -> %d: job %s (%s)", status, body.get("id"), body.get("status")
            )
        else:
            logger.error("POST /retrain -> %d: %s", status, body)
