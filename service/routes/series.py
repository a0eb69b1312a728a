"""Stored series: create, upload observations (JSON or CSV), read, page, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import ingest
from service.auth import ADMIN, READ
from service.config import Settings
from service.db import repository
from service.deps import ServingDep, SessionDep, SessionsDep, SettingsDep
from service.errors import LimitExceeded, SeriesConflict, UnknownFrequency
from service.schemas import (
    SERIES_ID_PATTERN,
    IngestResult,
    ObservationOut,
    ObservationsPage,
    SeriesDetail,
    SeriesOut,
    SeriesPage,
    SeriesPut,
    Timestamp,
)
from service.timeindex import parse_frequency, same_frequency

router = APIRouter(prefix="/series", tags=["series"])

SeriesIdPath = Annotated[str, Path(pattern=SERIES_ID_PATTERN, description="Series id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No series with this id."}}


def _out(series: repository.Series) -> SeriesOut:
    return SeriesOut.model_validate(series, from_attributes=True)


def _check_page(limit: int, settings: Settings, loc: str = "limit") -> None:
    if limit > settings.max_page_size:
        raise LimitExceeded(
            f"limit {limit} exceeds the page size limit of {settings.max_page_size} "
            "(FORECAST_MAX_PAGE_SIZE)",
            ("query", loc),
        )


@router.put(
    "/{series_id}",
    dependencies=[ADMIN],
    response_model=SeriesOut,
    status_code=status.HTTP_200_OK,
    responses={
        201: {"model": SeriesOut, "description": "Created."},
        409: {"description": "Frequency change on a series with data."},
    },
)
def put_series(
    series_id: SeriesIdPath,
    body: SeriesPut,
    session: SessionDep,
    serving: ServingDep,
    response: Response,
) -> SeriesOut:
    try:
        parse_frequency(body.frequency)
    except ValueError as exc:
        raise UnknownFrequency(str(exc), ("body", "frequency")) from exc
    existing = session.get(repository.Series, series_id)
    if (
        existing is not None
        and not same_frequency(existing.frequency, body.frequency)
        and repository.has_observations(session, series_id=series_id)
    ):
        raise SeriesConflict(
            f"series {series_id!r} has observations at frequency {existing.frequency!r}; "
            "delete it first to store it at another frequency",
            ("body", "frequency"),
        )
    series, created = repository.put_series(
        session, series_id=series_id, frequency=body.frequency, description=body.description
    )
    serving.series_changed(series_id)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return _out(series)


OBSERVATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/ObservationIn"},
                },
                "example": [{"ts": "1949-01-01", "value": 112}, {"ts": "1949-02-01", "value": 118}],
            },
            "text/csv": {
                "schema": {"type": "string"},
                "example": "ts,value\n1949-01-01,112\n1949-02-01,118\n",
            },
        },
    }
}


@router.post(
    "/{series_id}/observations",
    dependencies=[ADMIN],
    response_model=IngestResult,
    openapi_extra=OBSERVATIONS_BODY,
    responses={
        **NOT_FOUND,
        413: {"description": "Body over FORECAST_MAX_BODY_BYTES."},
        415: {"description": "Neither JSON nor CSV."},
        422: {"description": "Rows rejected (each named); nothing was stored."},
    },
)
async def upload_observations(
    series_id: SeriesIdPath,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    serving: ServingDep,
) -> IngestResult:
    """Insert or replace observations by timestamp. All rows are checked first (finite values,
    on the series' frequency, oldest first, no timestamp twice); one bad row and nothing is
    stored. The answer comes after the commit."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    result = await run_in_threadpool(_ingest, sessions, settings, series_id, content_type, body)
    serving.series_changed(series_id)  # committed: this process's next forecast sees it
    return result


def _ingest(
    sessions: sessionmaker[Session],
    settings: Settings,
    series_id: str,
    content_type: str,
    body: bytes,
) -> IngestResult:
    with sessions() as session:
        series = repository.get_series(session, series_id=series_id)
        ts, values = ingest.parse_body(content_type, body, settings.max_observations_per_request)
        ingest.check_rows(ts, series.frequency)
        inserted, updated = repository.upsert_observations(
            session, series_id=series_id, ts=ts, values=values
        )
    return IngestResult(series_id=series_id, received=len(ts), inserted=inserted, updated=updated)


@router.get("", response_model=SeriesPage, dependencies=[READ])
def list_series(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 100,
    after: Annotated[
        str | None, Query(pattern=SERIES_ID_PATTERN, description="Last id of the previous page.")
    ] = None,
) -> SeriesPage:
    _check_page(limit, settings)
    items = repository.list_series(session, limit=limit, after=after)
    next_after = items[-1].id if len(items) == limit else None
    return SeriesPage(items=[_out(s) for s in items], next_after=next_after)


@router.get("/{series_id}", response_model=SeriesDetail, responses=NOT_FOUND, dependencies=[READ])
def get_series(series_id: SeriesIdPath, session: SessionDep) -> SeriesDetail:
    stats = repository.series_stats(session, series_id=series_id)
    return SeriesDetail(
        **_out(stats.series).model_dump(),
        observation_count=stats.count,
        first_ts=stats.first_ts,
        last_ts=stats.last_ts,
    )


@router.get(
    "/{series_id}/observations",
    response_model=ObservationsPage,
    responses=NOT_FOUND,
    dependencies=[READ],
)
def get_observations(
    series_id: SeriesIdPath,
    session: SessionDep,
    settings: SettingsDep,
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1)] = 1000,
) -> ObservationsPage:
    """Oldest first, ``start`` to ``end`` inclusive; next page: start = last ts + 1 period."""
    _check_page(limit, settings)
    rows = repository.read_observations(
        session,
        series_id=series_id,
        start=None if start is None else ingest.to_naive_utc(start),
        end=None if end is None else ingest.to_naive_utc(end),
        limit=limit,
    )
    return ObservationsPage(
        series_id=series_id, observations=[ObservationOut(ts=o.ts, value=o.value) for o in rows]
    )


@router.delete(
    "/{series_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    dependencies=[ADMIN],
)
def delete_series(series_id: SeriesIdPath, session: SessionDep, serving: ServingDep) -> Response:
    repository.delete_series(session, series_id=series_id)
    serving.series_changed(series_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
