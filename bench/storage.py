"""Storage benchmark: ingestion rate and forecast-by-id latency on PostgreSQL.

Starts the api (one uvicorn worker) against a fresh PostgreSQL database and measures, in one
run: a 100,000-row CSV and JSON upload (insert, then the same rows again as updates), and
forecast latency for 1 and 1,000 stored series next to the same forecast sent inline (the
baseline without the database). Prints a markdown table; ``--out`` also writes it to a file.

    python -m bench.storage [--rows 100000] [--series 1000] [--repeats 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import emit, run_facts  # noqa: E402
from tests.conftest import ADMIN, fresh_database, start_migrated_api  # noqa: E402


def timed(fn: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    response = fn()
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed


def start_api(url: str) -> tuple[subprocess.Popen[str], str]:
    return start_migrated_api({"DATABASE_URL": url, "FORECAST_LOG_LEVEL": "WARNING"})


def ingest_rows(client: httpx.Client, rows: int) -> list[tuple[str, str]]:
    client.put("/series/bench-h", json={"frequency": "h"}).raise_for_status()
    client.put("/series/bench-h-json", json={"frequency": "h"}).raise_for_status()
    stamps = [datetime(2000, 1, 1, tzinfo=UTC).timestamp() + 3600 * i for i in range(rows)]
    iso = [datetime.fromtimestamp(t, UTC).replace(tzinfo=None).isoformat() for t in stamps]
    csv_body = "ts,value\n" + "".join(f"{t},{i % 977 * 0.5}\n" for i, t in enumerate(iso))
    json_body = (
        "[" + ",".join(f'{{"ts":"{t}","value":{i % 977 * 0.5}}}' for i, t in enumerate(iso)) + "]"
    )

    def upload(series: str, body: str, kind: str) -> float:
        return timed(
            lambda: client.post(
                f"/series/{series}/observations", content=body, headers={"content-type": kind}
            )
        )

    results = []
    for label, series, body, kind in [
        ("CSV", "bench-h", csv_body, "text/csv"),
        ("JSON", "bench-h-json", json_body, "application/json"),
    ]:
        insert_s = upload(series, body, kind)
        update_s = upload(series, body, kind)
        results.append(
            (
                f"ingest {rows:,} rows, {label}, new rows",
                f"{rows / insert_s:,.0f} rows/s ({insert_s:.2f} s; {len(body) / 1e6:.1f} MB)",
            )
        )
        results.append(
            (
                f"ingest {rows:,} rows, {label}, same rows again (updates)",
                f"{rows / update_s:,.0f} rows/s ({update_s:.2f} s)",
            )
        )
    return results


def store_series(client: httpx.Client, n: int, length: int) -> dict[str, list[float]]:
    histories = {}
    for i in range(n):
        sid = f"m{i:04d}"
        values = [100 + 10 * ((m + i) % 12) + m * 0.5 for m in range(length)]
        histories[sid] = values
        client.put(f"/series/{sid}", json={"frequency": "MS"}).raise_for_status()
        body = "ts,value\n" + "".join(
            f"{2000 + m // 12}-{m % 12 + 1:02d}-01,{v}\n" for m, v in enumerate(values)
        )
        client.post(
            f"/series/{sid}/observations", content=body, headers={"content-type": "text/csv"}
        ).raise_for_status()
    return histories


def latency(client: httpx.Client, payload: dict[str, object], repeats: int) -> tuple[float, float]:
    timed(lambda: client.post("/forecast", json=payload))  # warm-up
    samples = sorted(timed(lambda: client.post("/forecast", json=payload)) for _ in range(repeats))
    return statistics.median(samples) * 1e3, samples[int(0.95 * (len(samples) - 1))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--history", type=int, default=36, help="observations per stored series")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", help="name the model (default: the monthly default)")
    args = parser.parse_args()

    with fresh_database("postgresql", Path("/tmp")) as url:
        proc, base = start_api(url)
        try:
            with httpx.Client(base_url=base, timeout=120, headers=ADMIN) as client:
                rows = ingest_rows(client, args.rows)
                histories = store_series(client, args.series, args.history)
                ids = list(histories)
                for n, repeats in ((1, args.repeats), (args.series, max(5, args.repeats // 3))):
                    named = {"model": args.model} if args.model else {}
                    stored = {"series": [{"id": s} for s in ids[:n]], "horizon": 12, **named}
                    inline = {
                        "series": [
                            {"id": s, "history": histories[s], "start": "2000-01-01", "freq": "MS"}
                            for s in ids[:n]
                        ],
                        "horizon": 12,
                        **named,
                    }
                    s50, s95 = latency(client, stored, repeats)
                    i50, i95 = latency(client, inline, repeats)
                    rows.append(
                        (
                            f"forecast by id, {n:,} stored series (median / p95)",
                            f"{s50:.1f} / {s95:.1f} ms",
                        )
                    )
                    rows.append(
                        (
                            f"same forecast sent inline, {n:,} series (baseline, no database)",
                            f"{i50:.1f} / {i95:.1f} ms ({s50 / i50:.2f}x)",
                        )
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    lines = [
        f"# Storage benchmark, {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"{run_facts()} PostgreSQL on loopback; one uvicorn worker. "
        f"Stored series have {args.history} monthly observations. "
        f"Model: {args.model or 'the default monthly model'}.",
        "",
        "| measurement | result |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
