"""Serving benchmark: the api against the HTTP floor and MLflow serving, in one run.

Starts three servers on loopback, each one uvicorn worker: the api (``python -m service
serve``, on a fresh PostgreSQL database holding ``--series`` stored monthly series), a no-op
FastAPI endpoint that accepts the same JSON body (the floor: ``bench/floor_app.py``), and ``mlflow
models serve`` of the same ONNX model (the peer a user would pick instead). wrk drives each
for ``--duration`` seconds per case at 1 and 16 connections and reports requests/s and p50/p99
latency. Each round also times the model alone on the stored series' windows (no HTTP), the
least the api's large-batch latency can be on this machine at that moment. Prints a markdown
table, the targets of issue 7, and a last line with the key ratios.

    python bench/serving.py [--duration 10] [--model air_passengers] [--out FILE]

Needs wrk (Debian: apt-get install wrk) and the dev dependencies (mlflow, onnx).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import emit, run_facts  # noqa: E402
from service.config import Settings  # noqa: E402
from service.inference import Forecaster, load_forecaster  # noqa: E402
from service.schemas import AIR_PASSENGERS_1949_1960  # noqa: E402
from tests.conftest import (  # noqa: E402  (the tests' helpers)
    ADMIN,
    READ,
    free_port,
    fresh_database,
    rss_mb,
    start_migrated_api,
)

HISTORY = 72  # monthly observations per stored series (six years)

# With several bodies wrk calls request() for every request and sends one at random (so the
# stored-series cases read a different series each time); with one, the same request is sent
# without calling into Lua (less of wrk's CPU on this 2-core machine, for every server alike).
# done() prints the figures as one JSON line.
WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("BENCH_PATH")
wrk.method = "POST"
wrk.path = path
wrk.body = bodies[1]
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION")
math.randomseed(7)
if #bodies > 1 then
  request = function()
    return wrk.format(nil, path, nil, bodies[math.random(#bodies)])
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, '
    .. '"errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int


def wrk(url: str, bodies: list[str], connections: int, duration_s: float, work: Path) -> Result:
    """One wrk run (one thread) against ``url`` with bodies drawn at random from ``bodies``."""
    script, body_file = work / "bench.lua", work / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    body_file.write_text("\n".join(bodies) + "\n")
    base, _, path = url.partition("://")[2].partition("/")
    env = {
        **os.environ,
        "BENCH_BODIES": str(body_file),
        "BENCH_PATH": "/" + path,
        "BENCH_CONTENT_TYPE": "application/json",
        # The api's read token. The floor and MLflow get the same header, and ignore it.
        "BENCH_AUTHORIZATION": READ["Authorization"],
    }
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "30s"]
    command += ["-s", str(script), f"http://{base}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return Result(
        rps=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        requests=figures["requests"],
        failed=figures["errors"] + figures["non_2xx"],
    )


QUIET_BUSY = 0.15  # a run starts once the machine's CPUs are less busy than this
QUIET_SAMPLE_S = 0.5
QUIET_MIN_CAP_S = 2.0  # the wait's cap: twice a run's length, and at least this


def cpu_busy(sample_s: float) -> float | None:
    """The share of all CPUs' time spent busy over ``sample_s`` (None where /proc/stat is not
    there to read)."""

    def times() -> tuple[int, int]:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(sample_s)
        total1, idle1 = times()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(max_wait_s: float) -> float:
    """Wait until the machine is quiet, at most ``max_wait_s``; return the seconds waited. A
    server may still be working for the last run when the next one starts: the api writes the
    forecast log of a 16-connection batch case for a few seconds after it (measured: the api
    at 100% of a core and PostgreSQL at 19% during the floor's next run)."""
    began = time.monotonic()
    while time.monotonic() - began < max_wait_s:
        busy = cpu_busy(QUIET_SAMPLE_S)
        if busy is None or busy < QUIET_BUSY:
            break
    return time.monotonic() - began


FLOOR = "floor: no-op FastAPI endpoint, same body"
MLFLOW = "mlflow models serve: the same window"
MODEL_ALONE = "onnxruntime alone: the stored series' windows, no HTTP"


def model_alone(
    forecaster: Forecaster, threads: int, windows: np.ndarray, duration_s: float
) -> Result:
    """The model's own share of a large request: ``windows`` (B, L) through the bundle's
    session the way the api runs them (its chunks, on ``threads`` threads like its inference
    threads, one onnxruntime thread each), back to back for ``duration_s``, in this process:
    no HTTP, JSON, planning or database. The api's latency for the same series can't go below
    this, and on a VM the figure moves with the host from hour to hour, so it is measured in
    the same round as the api."""
    chunk = forecaster.chunk_rows or len(windows)
    positions = np.zeros(len(windows), dtype=np.float32)
    latencies = []
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def once() -> None:
            parts = [
                pool.submit(forecaster.predict, windows[i : i + chunk], positions[i : i + chunk])
                for i in range(0, len(windows), chunk)
            ]
            for part in parts:
                part.result()

        once()  # warm-up
        began = time.perf_counter()
        while (start := time.perf_counter()) - began < duration_s:
            once()
            latencies.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
    p50, p99 = np.percentile(latencies, [50, 99], method="inverted_cdf") * 1e3
    return Result(len(latencies) / elapsed, float(p50), float(p99), len(latencies), 0)


def median_run(results: list[Result]) -> Result:
    """The run with the median requests/s (the lower middle one of an even count), whole, so
    its latencies are that run's; failures are summed over all runs."""
    ordered = sorted(results, key=lambda r: r.rps)
    middle = ordered[(len(ordered) - 1) // 2]
    return Result(
        middle.rps,
        middle.p50_ms,
        middle.p99_ms,
        sum(r.requests for r in results),
        sum(r.failed for r in results),
    )


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
        try:
            if httpx.get(url).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def process(command: list[str], url: str, log: Path, env: dict[str, str]) -> Iterator[int]:
    """Run a server until the block ends; yields its pid once ``url`` answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=out
        )
        try:
            try:
                wait_until_up(url, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{log.read_text()[-3000:]}") from None
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def stored_history(i: int) -> list[float]:
    """AirPassengers-shaped series, scaled and shifted per series, all positive."""
    base = AIR_PASSENGERS_1949_1960[(i % 6) * 12 : (i % 6) * 12 + HISTORY]
    return [round(v * (0.5 + (i % 97) / 50) + i % 13, 2) for v in base]


def store_series(base: str, n: int) -> list[str]:
    ids = [f"bench-{i:04d}" for i in range(n)]
    with httpx.Client(base_url=base, timeout=60, headers=ADMIN) as client:
        for i, sid in enumerate(ids):
            client.put(f"/series/{sid}", json={"frequency": "MS"}).raise_for_status()
            body = "ts,value\n" + "".join(
                f"{1949 + m // 12}-{m % 12 + 1:02d}-01,{v}\n"
                for m, v in enumerate(stored_history(i))
            )
            client.post(
                f"/series/{sid}/observations", content=body, headers={"content-type": "text/csv"}
            ).raise_for_status()
    return ids


def member_bundle(ensemble: Path, input_size: int, out: Path) -> Path:
    """One member of an ensemble bundle as a bundle of its own: the model the targets of
    issue 7 were set with (a 2-layer, 64-unit LSTM reading 60 steps) is one member of the
    shipped M3 monthly ensemble. Exported from the ensemble's checkpoint, checked against
    torch, and given the ensemble's manifest with this member's graph, shapes and sums."""
    import hashlib

    import onnxruntime as ort
    import torch

    from service.bundle import BundleManifest, write_bundle
    from training.export import export_onnx
    from training.model import Checkpoint

    checkpoint = Checkpoint.load(str(ensemble / "checkpoint.pt"))
    index = next(i for i, c in enumerate(checkpoint.configs) if c.input_size == input_size)
    single = Checkpoint([checkpoint.configs[index]], [checkpoint.state_dicts[index]])
    model = single.build()
    model_bytes = export_onnx(model)
    windows = (np.random.default_rng(0).random((64, input_size)) * 900 + 100).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(windows)).numpy()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"y": windows})
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-3):
        raise RuntimeError(f"onnxruntime and torch differ by {np.abs(got - expected).max()}")
    checkpoint_path = out.parent / f".{out.name}.pt"
    single.save(str(checkpoint_path))
    checkpoint_bytes = checkpoint_path.read_bytes()
    checkpoint_path.unlink()
    manifest = json.loads((ensemble / "manifest.json").read_text())
    manifest.update(
        name=f"{manifest['name']}_member_{input_size}",
        input_size=input_size,
        inputs=[{"name": "y", "shape": ["batch", input_size], "dtype": "float32"}],
        architecture=model.describe(),
        onnx_sha256=hashlib.sha256(model_bytes).hexdigest(),
        checkpoint_sha256=hashlib.sha256(checkpoint_bytes).hexdigest(),
        metrics={},  # the ensemble's holdout figures are not this member's
    )
    bundle = write_bundle(
        out, model_bytes, BundleManifest.model_validate(manifest), checkpoint_bytes
    )
    return bundle.path


def mlflow_model(bundle: Path, work: Path) -> Path:
    """The bundle's model.onnx as an MLflow model folder, on the CPU provider, one thread."""
    import mlflow.onnx
    import onnx

    path = work / "mlflow_model"
    mlflow.onnx.save_model(
        onnx.load(str(bundle / "model.onnx")),
        str(path),
        onnx_execution_providers=["CPUExecutionProvider"],
        onnx_session_options={"intra_op_num_threads": 1, "inter_op_num_threads": 1},
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--model",
        default="m3_monthly:60",
        help="a bundle under models/, or NAME:L for the member of ensemble NAME that reads L "
        "steps (default: the 2-layer, 64-unit, 60-step member of m3_monthly)",
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--series", type=int, default=1000, help="stored series (the batch size)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every run; the table shows medians"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serving.py needs wrk: apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="bench-model-") as built:
        if ":" in args.model:
            name, length = args.model.split(":")
            print(f"exporting the {length}-step member of {name} ...", file=sys.stderr)
            bundle = member_bundle(REPO / "models" / name, int(length), Path(built) / "member")
        else:
            bundle = REPO / "models" / args.model
        rows, spread, memory, manifest = measure(args, bundle)
    report(rows, spread, memory, args, manifest)


def measure(
    args: argparse.Namespace, bundle: Path
) -> tuple[
    list[tuple[str, int, Result]],
    dict[tuple[str, int], tuple[float, float]],
    dict[str, float],
    dict[str, object],
]:
    """The median run of every case over ``--repeat`` rounds, each case's lowest and highest
    requests/s, and the api's resident memory."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    size, horizon = manifest["input_size"], manifest["horizon"]
    history = AIR_PASSENGERS_1949_1960
    inline = {
        "series": [{"id": "air", "history": history, "start": "1949-01-01", "freq": "MS"}],
        "horizon": horizon,
    }
    window = [float(v) for v in history[-size:]]
    tensor: dict[str, object] = {"y": [window]}  # mlflow's tensor input: the same one window
    if manifest["covariates"]:
        tensor["season_position"] = [0.0]  # January 1961 follows December 1960
    mlflow_body = json.dumps({"inputs": tensor})

    runs: dict[tuple[str, int], list[Result]] = {}
    memory: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(fresh_database("postgresql", work))
        shutil.copytree(bundle, work / "models" / manifest["name"])
        env = {
            "DATABASE_URL": url,
            "FORECAST_MODELS_DIR": str(work / "models"),
            "FORECAST_LOG_LEVEL": os.environ.get("FORECAST_LOG_LEVEL", "INFO"),
        }
        api, base = start_migrated_api(env)
        stack.callback(api.wait, timeout=30)
        stack.callback(api.terminate)
        print(f"storing {args.series} series ...", file=sys.stderr)
        ids = store_series(base, args.series)
        few = min(100, args.series)
        rng = random.Random(7)
        cases = {
            "one inline series": [json.dumps(inline)],
            "one stored series by id": [
                json.dumps({"series": [{"id": sid}], "horizon": horizon}) for sid in ids
            ],
            f"{few:,} stored series": [
                json.dumps(
                    {"series": [{"id": s} for s in rng.sample(ids, few)], "horizon": horizon}
                )
                for _ in range(20)
            ],
            f"{args.series:,} stored series": [
                json.dumps({"series": [{"id": s} for s in ids], "horizon": horizon})
            ],
        }
        for bodies in cases.values():  # every path warmed up, and every body answers 200
            httpx.post(
                f"{base}/forecast",
                content=bodies[0].encode(),
                headers={**READ, "content-type": "application/json"},
                timeout=60,
            ).raise_for_status()
        memory["after warm-up"] = rss_mb(api.pid)

        # The other two servers run beside the api (idle while another is measured), so each
        # round measures all three within a minute or two of each other.
        port = free_port()
        floor = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "floor_app:app"]
        floor += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        stack.enter_context(process(floor, f"http://127.0.0.1:{port}/docs", work / "floor.log", {}))
        floor_url = f"http://127.0.0.1:{port}/forecast"
        port = free_port()
        mlflow = [sys.executable, "-m", "mlflow", "models", "serve", "-m"]
        mlflow += [str(mlflow_model(bundle, work)), "--env-manager", "local"]
        mlflow += ["--port", str(port), "--host", "127.0.0.1", "--workers", "1"]
        # mlflow execs `uvicorn` by name: the interpreter's bin folder goes first on PATH.
        path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        stack.enter_context(
            process(mlflow, f"http://127.0.0.1:{port}/ping", work / "mlflow.log", path)
        )
        mlflow_url = f"http://127.0.0.1:{port}/invocations"
        httpx.post(
            mlflow_url, content=mlflow_body.encode(), headers={"content-type": "application/json"}
        ).raise_for_status()

        def over_http(url: str, bodies: list[str]) -> Callable[[int], Result]:
            return lambda c: wrk(url, bodies, c, args.duration, work)

        # The model alone, with the api's settings, on the stored series' windows: one caller,
        # back to back, so at the large batch's 1 connection.
        settings = Settings()
        forecaster = load_forecaster(str(bundle), "cpu", settings.intra_op_threads)
        windows = np.array([stored_history(i)[-size:] for i in range(args.series)], np.float32)
        plan = [
            (f"api: {name}", args.connections, over_http(f"{base}/forecast", bodies))
            for name, bodies in cases.items()
        ]
        plan.append(
            (
                MODEL_ALONE,
                [min(args.connections)],
                lambda _: model_alone(
                    forecaster, settings.inference_threads, windows, args.duration
                ),
            )
        )
        plan.append((FLOOR, args.connections, over_http(floor_url, cases["one inline series"])))
        plan.append((MLFLOW, args.connections, over_http(mlflow_url, [mlflow_body])))
        for round_ in range(1, args.repeat + 1):
            for name, connections, run in plan:
                for c in connections:
                    waited = wait_until_quiet(max(QUIET_MIN_CAP_S, 2 * args.duration))
                    print(
                        f"round {round_}: {name}, {c} connections ... "
                        f"(after {waited:.1f} s for the machine to quiet down)",
                        file=sys.stderr,
                    )
                    runs.setdefault((name, c), []).append(run(c))
        memory["after the run"] = rss_mb(api.pid)

    rows = [(name, c, median_run(results)) for (name, c), results in runs.items()]
    spread = {
        (name, c): (min(r.rps for r in rs), max(r.rps for r in rs))
        for (name, c), rs in runs.items()
    }
    return rows, spread, memory, manifest


def report(
    rows: list[tuple[str, int, Result]],
    spread: dict[tuple[str, int], tuple[float, float]],
    memory: dict[str, float],
    args: argparse.Namespace,
    manifest: dict[str, object],
) -> None:
    by = {(name, c): r for name, c, r in rows}
    top = max(args.connections)
    floor = by[(FLOOR, top)]
    mlflow = by[(MLFLOW, top)]
    inline = by[("api: one inline series", top)]
    stored = by[("api: one stored series by id", top)]
    batch = by[(f"api: {args.series:,} stored series", min(args.connections))]
    alone = by[(MODEL_ALONE, min(args.connections))]
    lines = [
        f"# Serving benchmark, {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"{run_facts()} wrk (1 thread) on loopback, {args.duration:g} s per run, "
        f"{args.repeat} rounds (the three servers, and the model alone, measured in turn in each "
        "round, each run "
        f"started once the CPUs were less than {QUIET_BUSY:.0%} busy, or after twice a run's "
        f"length ({QUIET_MIN_CAP_S:g} s at least); the table "
        "shows each case's median run, its range of requests/s, and failures over all "
        "runs); one uvicorn "
        f"worker per server. Model: `{manifest['name']}` version {manifest['version']} "
        f"(input_size {manifest['input_size']}, horizon {manifest['horizon']}); the api on "
        f"PostgreSQL with {args.series:,} stored series of {HISTORY} monthly values.",
        "",
        "| case | connections | requests/s (median) | range | p50 ms | p99 ms | requests | failed "
        "| vs floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c, r in rows:
        share = "-" if name == MODEL_ALONE else f"{r.rps / by[(FLOOR, c)].rps:.0%}"
        low, high = spread[(name, c)]
        lines.append(
            f"| {name} | {c} | {r.rps:,.0f} | {low:,.0f} to {high:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.requests:,} | {r.failed} | {share} |"
        )
    failed = sum(r.failed for _, _, r in rows)
    targets = [
        (f"one inline series, {top} connections: >= 50% of the floor's requests/s",
         f"{inline.rps / floor.rps:.0%}", inline.rps >= 0.5 * floor.rps),
        (f"one inline series, {top} connections: p99 <= 15 ms",
         f"{inline.p99_ms:.2f} ms", inline.p99_ms <= 15),
        (f"one stored series by id, {top} connections: >= 35% of the floor",
         f"{stored.rps / floor.rps:.0%}", stored.rps >= 0.35 * floor.rps),
        (f"{args.series:,} stored series, {min(args.connections)} connection: p99 <= 100 ms",
         f"{batch.p99_ms:.1f} ms (p50 {batch.p50_ms:.1f}; the model alone: p99 "
         f"{alone.p99_ms:.1f}, p50 {alone.p50_ms:.1f})", batch.p99_ms <= 100),
        (f"one inline series, {top} connections: >= 5x MLflow serving",
         f"{inline.rps / mlflow.rps:.1f}x", inline.rps >= 5 * mlflow.rps),
        ("api resident memory after warm-up <= 300 MB",
         f"{memory['after warm-up']:.0f} MB ({memory['after the run']:.0f} MB after the run)",
         memory["after warm-up"] <= 300),
        ("no failed requests", str(failed), failed == 0),
    ]  # fmt: skip
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets]
    lines += [
        "",
        f"Key ratios ({top} connections): inline {inline.rps / floor.rps:.0%} of the floor, "
        f"stored {stored.rps / floor.rps:.0%} of the floor, inline "
        f"{inline.rps / mlflow.rps:.1f}x MLflow serving; {args.series:,}-series batch p99 "
        f"{batch.p99_ms:.0f} ms (the model alone {alone.p99_ms:.0f}); "
        f"RSS {memory['after warm-up']:.0f} MB; targets met "
        f"{sum(ok for *_, ok in targets)}/{len(targets)}",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
