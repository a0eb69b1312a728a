"""Observation uploads: parse a JSON or CSV body and check every row before anything is stored.

Problems are collected per row (up to MAX_REPORTED) so a client can fix a whole file at once;
a request with any problem stores nothing.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from datetime import UTC, datetime

from pydantic import TypeAdapter, ValidationError

from service.errors import InvalidRows, LimitExceeded, Loc, UnsupportedMediaType
from service.limits import CSV_TYPES, media_type
from service.schemas import ObservationIn
from service.timeindex import is_on_frequency, parse_frequency

MAX_REPORTED = 20
_OBSERVATIONS = TypeAdapter(list[ObservationIn])


def parse_body(content_type: str, body: bytes, max_rows: int) -> tuple[list[datetime], list[float]]:
    media = media_type(content_type)
    if media in ("application/json", ""):
        ts, values = _parse_json(body)
    elif media in CSV_TYPES:
        ts, values = _parse_csv(body)
    else:
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted; send application/json "
            '([{"ts": ..., "value": ...}]) or text/csv (header ts,value)',
            ("header", "content-type"),
        )
    if len(ts) > max_rows:
        raise LimitExceeded(
            f"{len(ts)} observations in one request; the limit is {max_rows} "
            "(FORECAST_MAX_OBSERVATIONS_PER_REQUEST)",
            ("body",),
        )
    if not ts:
        raise InvalidRows([(("body",), "no observations in the request")], total=0)
    return ts, values


def _parse_json(body: bytes) -> tuple[list[datetime], list[float]]:
    try:
        rows = _OBSERVATIONS.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        problems: list[tuple[Loc, str]] = [
            (("body", *err["loc"]), err["msg"]) for err in errors[:MAX_REPORTED]
        ]
        raise InvalidRows(problems, total=len(errors)) from None
    return [to_naive_utc(r.ts) for r in rows], [r.value for r in rows]


def _parse_csv(body: bytes) -> tuple[list[datetime], list[float]]:
    try:
        # newline="": the csv module reads line ends itself (\r, \n or \r\n), as its docs ask.
        reader = csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""))
    except UnicodeDecodeError as exc:
        raise InvalidRows([(("body",), f"CSV body is not UTF-8: {exc}")], total=1) from None
    try:
        return _read_csv(reader)
    except csv.Error as exc:  # a NUL byte, a quote left open...
        raise InvalidRows([(("body",), f"CSV body could not be read: {exc}")], total=1) from None


def _read_csv(reader: Iterator[list[str]]) -> tuple[list[datetime], list[float]]:
    header = [h.strip().lower() for h in next(reader, [])]
    if header != ["ts", "value"]:
        raise InvalidRows([(("body", "header"), f"CSV header must be ts,value, got {header}")], 1)
    ts: list[datetime] = []
    values: list[float] = []
    problems: list[tuple[Loc, str]] = []
    bad = 0
    for i, row in enumerate(reader):  # i: data row index from 0 (file line i + 2)
        try:
            if len(row) != 2:
                raise ValueError(f"expected 2 fields, got {len(row)}")
            stamp, value = datetime.fromisoformat(row[0].strip()), float(row[1])
            if not math.isfinite(value):
                raise ValueError(f"value {row[1].strip()!r} is not finite")
        except ValueError as exc:
            bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append((("body", i), f"row {i} (line {i + 2}): {exc}"))
            continue
        ts.append(to_naive_utc(stamp))
        values.append(value)
    if problems:
        raise InvalidRows(problems, total=bad)
    return ts, values


def to_naive_utc(ts: datetime) -> datetime:
    """Aware timestamps become UTC; naive ones are taken as given."""
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def check_rows(ts: list[datetime], frequency: str) -> None:
    """Every timestamp on the series' frequency, in time order, none twice in one request.
    (Out of order is refused like a repeat: a file sorted wrong is usually a file read
    wrong, and the answer should say so rather than store it.)"""
    offset = parse_frequency(frequency)
    problems: list[tuple[Loc, str]] = []
    bad = 0
    first_seen: dict[datetime, int] = {}
    latest: datetime | None = None
    for i, stamp in enumerate(ts):
        message = None
        if stamp in first_seen:
            message = f"row {i}: ts {stamp.isoformat()} repeats row {first_seen[stamp]}"
        elif not is_on_frequency(stamp, offset):
            message = f"row {i}: ts {stamp.isoformat()} does not fall on frequency {frequency!r}"
        elif latest is not None and stamp < latest:
            message = (
                f"row {i}: ts {stamp.isoformat()} comes before {latest.isoformat()} in an "
                "earlier row; send rows oldest first"
            )
        else:
            first_seen[stamp] = i
            latest = stamp
        if message is not None:
            bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append((("body", i, "ts"), message))
    if problems:
        raise InvalidRows(problems, total=bad)
