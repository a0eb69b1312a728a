"""Micro-batching: concurrent requests share session calls and each gets its own answer."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from service import batching
from service.batching import Batcher
from service.config import Settings
from service.forecasting import infer, plan_request
from service.inference import CHUNK_ROWS, ModelRows, load_forecaster
from service.model_set import load_model_set
from service.schemas import ForecastRequest
from tests.conftest import AIR_BUNDLE, MODELS
from tests.service.test_observability import scrape, value


def variants(air_history: list[float], n: int) -> list[dict[str, object]]:
    """n different inline series: AirPassengers scaled, shifted and cut differently."""
    return [
        {
            "id": f"s{i}",
            "history": [round(v * (0.5 + i / 17) + i, 3) for v in air_history[: 120 + i % 24]],
            "start": "1949-01-01",
            "freq": "MS",
        }
        for i in range(n)
    ]


def as_array(rows: ModelRows) -> np.ndarray:
    """The batcher's answer as the session's output layout (B, H, Q)."""
    return np.asarray(rows.values, dtype=np.float32).transpose(1, 2, 0)


def batches_over_one(client) -> float:
    samples = scrape(client)
    total = value(samples, "forecast_inference_batch_size_count", model="air_passengers")
    single = value(
        samples, "forecast_inference_batch_size_bucket", model="air_passengers", le="1.0"
    )
    return total - single


def test_concurrent_requests_share_batches_and_get_their_own_forecasts(client, air_history):
    series = variants(air_history, 48)
    bodies = [{"series": [s], "horizon": 12, "quantiles": [0.1, 0.9]} for s in series]
    # One at a time, each request is a batch of one: the reference answers.
    alone = [client.post("/forecast", json=body).json()["forecasts"][0] for body in bodies]
    batched_before = batches_over_one(client)
    for _ in range(3):  # concurrency on a loaded 2-core machine: a few rounds to see batches
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda b: client.post("/forecast", json=b), bodies))
        assert [r.status_code for r in together] == [200] * len(bodies)
        for reference, response in zip(alone, together, strict=True):
            got = response.json()["forecasts"][0]
            assert got["id"] == reference["id"] and got["timestamps"] == reference["timestamps"]
            np.testing.assert_allclose(got["values"], reference["values"], rtol=1e-5)
            for q in ("0.1", "0.9"):
                np.testing.assert_allclose(
                    got["quantiles"][q], reference["quantiles"][q], rtol=1e-5
                )
    assert batches_over_one(client) > batched_before, "no session call served two requests"


def test_a_large_request_is_split_over_the_threads_and_matches_one_session_call(
    client, air_history
):
    settings = Settings()
    series = variants(air_history, 3 * settings.batch_max_rows)  # more than one batch
    request = {"series": series, "horizon": 12, "level": [80], "model": "air_passengers"}
    served = client.post("/forecast", json=request)
    assert served.status_code == 200
    models = load_model_set(MODELS, "cpu", 1, {"MS": "air_passengers"})
    parsed = ForecastRequest.model_validate(request)
    expected = infer(plan_request(parsed, models, settings), parsed)  # one session call
    got = served.json()["forecasts"]
    assert [f["id"] for f in got] == [s["id"] for s in series]
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have["values"], want.values, rtol=1e-5)
        np.testing.assert_allclose(have["quantiles"]["0.1"], want.quantiles["0.1"], rtol=1e-5)


def test_a_failed_session_call_fails_its_requests_and_the_queue_goes_on():
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    size = forecaster.manifest.input_size
    good = np.linspace(100, 200, size, dtype=np.float32)[None, :]
    wrong = np.ones((1, size - 1), dtype=np.float32)  # onnxruntime refuses the shape

    async def run() -> None:
        run_sizes: list[int] = []
        batcher = Batcher(threads=2, max_rows=8, observe=lambda _, n, __: run_sizes.append(n))
        try:
            with pytest.raises(Exception, match=r"(?i)invalid|dimension|shape"):
                await batcher.predict(forecaster, wrong, np.zeros(1, np.float32))
            outputs = await asyncio.gather(
                *(batcher.predict(forecaster, good * k, np.zeros(1, np.float32)) for k in (1, 2, 3))
            )
            direct = forecaster.predict(good, np.zeros(1, np.float32))
            np.testing.assert_allclose(as_array(outputs[0]), direct, rtol=1e-6)
            assert all(as_array(o).shape == direct.shape for o in outputs)
            # Large requests bypass the queue, cut into the model's chunks, in order.
            rows = 2 * CHUNK_ROWS + 7
            many = np.concatenate([good * (1 + i / 100) for i in range(rows)])
            months = np.arange(rows, dtype=np.float32) % 12
            before = len(run_sizes)
            split = await batcher.predict(forecaster, many, months)
            assert sorted(run_sizes[before:]) == [7, CHUNK_ROWS, CHUNK_ROWS]
            np.testing.assert_allclose(as_array(split), forecaster.predict(many, months), rtol=1e-5)
            # A large request whose session calls fail fails whole, and the next one is served.
            with pytest.raises(Exception, match=r"(?i)invalid|dimension|shape"):
                await batcher.predict(
                    forecaster, np.ones((rows, size - 1), np.float32), np.zeros(rows, np.float32)
                )
            again = await batcher.predict(forecaster, many, months)
            np.testing.assert_allclose(as_array(again), as_array(split), rtol=1e-6)
        finally:
            batcher.close()

    asyncio.run(run())


def test_a_request_of_more_than_one_chunk_is_split_over_the_threads_even_under_max_rows():
    """On the CPU a request of more rows than one chunk is not queued, where its chunks would
    run one after another in the draining thread: each chunk is its own session call, taken
    by whichever inference thread is free, and the answer is the rows in order."""
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    size = forecaster.manifest.input_size
    rows = 3 * CHUNK_ROWS + 5
    windows = np.random.default_rng(5).uniform(100, 600, (rows, size)).astype(np.float32)
    months = np.arange(rows, dtype=np.float32) % 12

    async def run() -> None:
        run_sizes: list[int] = []
        batcher = Batcher(threads=2, max_rows=256, observe=lambda _, n, __: run_sizes.append(n))
        try:
            assert batcher.split_above(forecaster) == CHUNK_ROWS
            split = await batcher.predict(forecaster, windows, months)
            assert sorted(run_sizes) == [5, CHUNK_ROWS, CHUNK_ROWS, CHUNK_ROWS]  # queued: [101]
            assert not batcher.queues  # it never went through a queue
            np.testing.assert_allclose(
                as_array(split), forecaster.predict(windows, months), rtol=1e-5
            )
            run_sizes.clear()
            await batcher.predict(forecaster, windows[:CHUNK_ROWS], months[:CHUNK_ROWS])
            assert run_sizes == [CHUNK_ROWS]  # one chunk's worth is queued, one session call
        finally:
            batcher.close()

    asyncio.run(run())


def test_a_queued_batch_of_more_than_one_chunk_runs_in_chunks_and_each_request_gets_its_rows():
    """Concurrent requests of 20 rows are batched up to max_rows; a batch of more than one
    chunk is run chunk by chunk (the draining thread and a helper take them in turn), and each
    request is answered with its own rows."""
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    size = forecaster.manifest.input_size
    rng = np.random.default_rng(11)
    requests = [rng.uniform(100, 600, (20, size)).astype(np.float32) for _ in range(12)]
    months = [np.arange(20, dtype=np.float32) % 12 for _ in requests]
    run_sizes: list[int] = []

    async def run() -> list[ModelRows]:
        batcher = Batcher(threads=2, max_rows=256, observe=lambda _, n, __: run_sizes.append(n))
        try:
            return await asyncio.gather(
                *map(partial(batcher.predict, forecaster), requests, months)
            )
        finally:
            batcher.close()

    outputs = asyncio.run(run())
    for windows, positions, output in zip(requests, months, outputs, strict=True):
        np.testing.assert_allclose(
            as_array(output), forecaster.predict(windows, positions), rtol=1e-5
        )
    assert sum(run_sizes) == 12 * 20
    assert CHUNK_ROWS in run_sizes, f"no batch of more than one chunk: {run_sizes}"
    assert max(run_sizes) == CHUNK_ROWS, f"a session call of more than one chunk: {run_sizes}"


def test_a_cancelled_large_request_stops_taking_chunks():
    """A client gone away cancels its request: the inference threads finish the chunks they
    are on and take no more of its chunks."""
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    chunks = 200
    windows = (
        np.random.default_rng(9)
        .uniform(100, 600, (chunks * CHUNK_ROWS, forecaster.manifest.input_size))
        .astype(np.float32)
    )
    months = np.zeros(len(windows), np.float32)
    run_sizes: list[int] = []

    async def run() -> None:
        batcher = Batcher(threads=2, max_rows=256, observe=lambda _, n, __: run_sizes.append(n))
        request = asyncio.ensure_future(batcher.predict(forecaster, windows, months))
        while not run_sizes:
            await asyncio.sleep(0.001)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        batcher.close()  # waits for the threads' tasks to end

    asyncio.run(run())
    assert 1 <= len(run_sizes) < chunks // 2, f"{len(run_sizes)} of {chunks} chunks ran"


@pytest.mark.parametrize("slice_s", [batching.DRAIN_SLICE_S, 0.0])
def test_every_queued_request_is_answered_with_its_own_rows_under_churn(slice_s, monkeypatch):
    """Waves of concurrent requests of 1 to 5 rows, some arriving while the inference thread
    drains the queue: each gets exactly its rows' forecasts, and the queue ends idle. With a
    zero time slice every batch hands the drain back to the executor's queue."""
    monkeypatch.setattr(batching, "DRAIN_SLICE_S", slice_s)
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    size = forecaster.manifest.input_size
    rng = np.random.default_rng(3)

    async def run() -> None:
        batcher = Batcher(threads=2, max_rows=16)
        try:
            for _ in range(20):
                requests = [
                    rng.uniform(100, 600, (int(rng.integers(1, 6)), size)).astype(np.float32)
                    for _ in range(int(rng.integers(1, 40)))
                ]
                months = [np.arange(len(r), dtype=np.float32) % 12 for r in requests]

                async def one(windows: np.ndarray, positions: np.ndarray) -> ModelRows:
                    await asyncio.sleep(float(rng.uniform(0, 0.002)))  # staggered arrivals
                    return await batcher.predict(forecaster, windows, positions)

                # A queue left busy with no thread draining it would never answer: fail.
                outputs = await asyncio.wait_for(asyncio.gather(*map(one, requests, months)), 30)
                for windows, positions, output in zip(requests, months, outputs, strict=True):
                    np.testing.assert_allclose(
                        as_array(output), forecaster.predict(windows, positions), rtol=1e-5
                    )
            # The last batch is answered before its thread finds the queue empty: wait for it.
            for _ in range(100):
                if all(not q.busy and not q.pending for q in batcher.queues.values()):
                    break
                await asyncio.sleep(0.01)
            assert all(not q.busy and not q.pending for q in batcher.queues.values())
        finally:
            batcher.close()

    asyncio.run(run())


def test_a_bad_window_fails_only_its_own_request():
    """The batch's input array is checked once; when it holds a window the model can't read,
    each request's own check names it, and the other requests of the batch are answered."""
    forecaster = load_forecaster(str(AIR_BUNDLE), "cpu", 1)
    size = forecaster.manifest.input_size
    good = [float(v) for v in np.linspace(100, 200, size)]
    bad = [*good[:-1], 0.0]  # the model works on logs: 0 is refused

    def refuse(windows: np.ndarray) -> None:
        if not forecaster.accepts(windows):
            raise ValueError(f"refused: minimum {windows.min():g}")

    windows, positions, errors = batching._inputs(
        forecaster, [[good], [bad], [good, good]], [[0.0], [1.0], [2.0, 3.0]], [refuse] * 3
    )
    assert windows.shape == (4, size) and positions.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], ValueError) and "minimum 0" in str(errors[1])

    async def run() -> None:
        batcher = Batcher(threads=2, max_rows=8)
        try:
            results = await asyncio.gather(
                *(
                    batcher.predict(forecaster, [w], [0.0], refuse)
                    for w in (good, bad, good, [*good[:-1], 1e39], good)  # 1e39: inf in float32
                ),
                return_exceptions=True,
            )
            direct = forecaster.predict(np.asarray([good], dtype=np.float32), np.zeros(1))
            for i in (0, 2, 4):
                np.testing.assert_allclose(as_array(results[i]), direct, rtol=1e-6)
            assert isinstance(results[1], ValueError) and "minimum 0" in str(results[1])
            assert isinstance(results[3], ValueError)
            # A large request (not queued) is checked the same way.
            with pytest.raises(ValueError, match="minimum 0"):
                await batcher.predict(forecaster, [good] * 9 + [bad], [0.0] * 10, refuse)
        finally:
            batcher.close()

    asyncio.run(run())
