"""Adaptive micro-batching: concurrent requests for one model share one onnxruntime call.

A single-series LSTM inference costs about as much as the HTTP request around it, and a batch
of 16 costs 4 to 8 times one, not sixteen (one onnxruntime thread, the shipped models and the
benchmark's 60-step member: 163 against 607 us, 983 against 8,350, 173 against 1,384). So
requests do not call the session themselves: they queue their rows and await them. While a
batch runs in the inference thread, newly arrived rows wait; when it ends they all go
together. An idle model runs a lone request at once (no waiting window to tune), and a busy
one batches as much as arrived meanwhile: the policy of Triton's dynamic batcher with a zero
queue delay, and of BentoML's adaptive batching.

Inference runs in its own thread pool, never on the event loop, so the loop keeps parsing and
answering requests while the model works (onnxruntime releases the GIL). The inference thread
drives its model's queue itself: when a batch ends it hands the results to the loop and takes
the rows that arrived meanwhile in the same hold of the GIL, so under load the next batch
starts at once. (A drain on the event loop that handed each batch to a thread waited about
0.7 ms per batch for that thread to get the GIL while the loop answered the last batch.)
Requests are batched up to ``max_rows`` series; a request of more, or on the CPU of more than
one chunk (32 rows), is not queued but cut into the model's chunks, which the inference
threads take in turn as each finishes its last: a thread slowed by other work on its core
takes fewer, so the request is not held up by the slower of two fixed halves. (Queued, a
100-series request's four chunks ran one after another in the draining thread: split, its
p50 went from 8.5 to 6.6 ms, and at 16 connections 196 such requests a second against 140.)
A queued batch of more than one chunk is run the same way, by the draining thread and a
helper in another inference thread: at 16 connections, requests of 10 stored series went
from 1,350 to 1,658 a second and those of 20 from 656 to 784 (medians of 4 interleaved 5 s
wrk runs, each run faster; one thread had been the limit, at about 13,500 series a second).

The work around a session call is done once per batch, in the inference thread, rather than
once per request on the event loop: the batch's input array is built from the requests' rows,
checked (each request's own check runs only when the batch holds a bad window), and its output
converted to Python floats (``ModelRows``), of which each request takes its slice. A
single-series request then makes no numpy call on the loop: the loop's CPU time per request
went from 183-204 to 143-155 us (the ASGI app driven in-process), and one inline series at 16
connections gained in each of 6 interleaved wrk runs (median 2,796 against 2,547 req/s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.inference import Forecaster, ModelRows, input_arrays, model_rows

logger = logging.getLogger(__name__)

DRAIN_SLICE_S = 0.02  # how long one drain keeps an inference thread while others may wait

# Called after every session run with (model name, rows, seconds): the metrics hook.
RunObserver = Callable[[str, int, float], None]
# A request's input windows: its rows of the model's input (sequences of input_size floats),
# and its calendar positions.
Rows = Sequence[Sequence[float] | np.ndarray] | np.ndarray
# Raises the request's own error (naming its series) for a bad window among its rows (n, L).
WindowCheck = Callable[[np.ndarray], None]


@dataclass
class _Pending:
    windows: Rows  # n rows
    positions: Sequence[float] | np.ndarray  # (n,)
    check: WindowCheck | None
    future: asyncio.Future[ModelRows]


@dataclass
class _ModelQueue:
    """Rows waiting for one model. ``pending`` and ``busy`` change under ``lock``: appended by
    the event loop, taken by the inference thread that drains them."""

    pending: deque[_Pending] = field(default_factory=deque)
    busy: bool = False  # an inference thread is draining this queue
    lock: threading.Lock = field(default_factory=threading.Lock)


class Batcher:
    """One queue per loaded model; ``predict`` is called from the event loop."""

    def __init__(self, threads: int, max_rows: int, observe: RunObserver | None = None) -> None:
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
        self.max_rows = max_rows
        self.observe = observe
        # Keyed by the Forecaster object: a swapped-out model's queue goes with it.
        self.queues: weakref.WeakKeyDictionary[Forecaster, _ModelQueue] = (
            weakref.WeakKeyDictionary()
        )

    async def predict(
        self,
        forecaster: Forecaster,
        windows: Rows,
        positions: Sequence[float] | np.ndarray,
        check: WindowCheck | None = None,
    ) -> ModelRows:
        """The forecasts of B windows (rows of input_size values) and their B calendar
        positions. ``check`` is called with the windows as an array (B, L) when one of them is
        not finite in float32 (or not positive for a model on logs), and raises the error."""
        loop = asyncio.get_running_loop()
        if len(windows) > self.split_above(forecaster):
            # A large request is not queued: its chunks run side by side in the inference
            # threads, so it is answered in a fraction of one thread's time.
            stop = threading.Event()  # set when the request ends: its client may have gone
            try:
                return await loop.run_in_executor(
                    self.executor, self._large, forecaster, windows, positions, check, stop
                )
            finally:
                stop.set()
        queue = self.queues.get(forecaster)
        if queue is None:
            queue = self.queues[forecaster] = _ModelQueue()
        pending = _Pending(windows, positions, check, loop.create_future())
        with queue.lock:
            queue.pending.append(pending)
            start, queue.busy = not queue.busy, True
        if start:
            self.executor.submit(self._drain, forecaster, queue, loop)
        return await pending.future

    def _large(
        self,
        forecaster: Forecaster,
        windows: Rows,
        positions: Sequence[float] | np.ndarray,
        check: WindowCheck | None,
        stop: threading.Event,
    ) -> ModelRows:
        """In an inference thread: a request too large to queue, checked and run in chunks."""
        stacked, places, errors = _inputs(forecaster, [windows], [positions], [check])
        if errors[0] is not None:
            raise errors[0]
        return self._chunked(forecaster, stacked, places, stop)

    def _chunked(
        self,
        forecaster: Forecaster,
        windows: np.ndarray,
        positions: np.ndarray,
        stop: threading.Event | None = None,
    ) -> ModelRows:
        """In an inference thread: B windows in the model's chunks (on the CPU; elsewhere in
        one call), which this thread and helpers in the other inference threads take in turn,
        each the next as it finishes its last, so a thread slowed by other work takes fewer.
        Only chunks a helper has begun are waited for: a helper that starts late (its thread
        was busy) finds none left. One task per thread rather than one per chunk: the event
        loop is woken once per request, not 32 times for 1,000 series (the api's 1,000-series
        p50 went from 46.7 to 44.6 ms, lower in each of 6 interleaved 5 s runs)."""
        size = forecaster.chunk_rows
        if size is None or len(windows) <= size:
            return self._run(forecaster, windows, positions)
        starts = range(0, len(windows), size)
        todo = iter(starts)  # this, ``running``, ``parts`` and ``failed`` change under ``ended``
        parts: dict[int, ModelRows] = {}
        failed: list[BaseException] = []
        running = 0  # chunks begun and not yet ended
        ended = threading.Condition()

        def take() -> None:
            nonlocal running
            while True:
                with ended:
                    start = next(todo, None)
                    if start is None or failed or (stop is not None and stop.is_set()):
                        return
                    running += 1
                try:
                    part = self._run(
                        forecaster, windows[start : start + size], positions[start : start + size]
                    )
                except BaseException as exc:
                    with ended:
                        failed.append(exc)
                        running -= 1
                        ended.notify_all()
                    return
                with ended:
                    parts[start] = part
                    running -= 1
                    ended.notify_all()

        for _ in range(min(self.threads, len(starts)) - 1):
            self.executor.submit(take)
        take()
        with ended:
            ended.wait_for(lambda: running == 0)
        if failed:
            raise failed[0]
        if len(parts) < len(starts):  # stopped: no one waits for the answer
            raise RuntimeError("the request ended before its chunks ran")
        return ModelRows.join([parts[start] for start in starts])

    def split_above(self, forecaster: Forecaster) -> int:
        """A request of more rows than this is not queued but split over the inference
        threads: more than ``max_rows``, or on the CPU more than one chunk, whose chunks would
        otherwise run one after another in the one thread that drains the queue."""
        chunk = forecaster.chunk_rows
        return self.max_rows if chunk is None else min(self.max_rows, chunk)

    def _take(self, queue: _ModelQueue) -> list[_Pending]:
        """The next batch, up to ``max_rows`` rows (at least one request); empty when the
        queue is empty, and then the queue is no longer busy."""
        with queue.lock:
            if not queue.pending:
                queue.busy = False
                return []
            batch = [queue.pending.popleft()]
            rows = len(batch[0].windows)
            while queue.pending and rows + len(queue.pending[0].windows) <= self.max_rows:
                rows += len(queue.pending[0].windows)
                batch.append(queue.pending.popleft())
            return batch

    def _drain(
        self, forecaster: Forecaster, queue: _ModelQueue, loop: asyncio.AbstractEventLoop
    ) -> None:
        """In an inference thread: run batches until the queue is empty, or for a time slice
        at most; then the drain goes to the back of the executor's queue, so other models'
        drains and large requests' chunks are not kept waiting by a model that stays busy."""
        batch: list[_Pending] = []
        began = time.perf_counter()
        try:
            while batch := self._take(queue):
                errors: list[BaseException | None] = [None] * len(batch)
                try:
                    windows, positions, errors = _inputs(
                        forecaster,
                        [p.windows for p in batch],
                        [p.positions for p in batch],
                        [p.check for p in batch],
                    )
                    output: ModelRows | BaseException | None = None
                    if not all(errors):
                        output = self._chunked(forecaster, windows, positions)
                except Exception as exc:  # every request of the batch gets the error
                    output = exc
                loop.call_soon_threadsafe(_deliver, batch, output, errors)
                if time.perf_counter() - began > DRAIN_SLICE_S:
                    with queue.lock:  # an empty queue is let go here, not by a new drain
                        queue.busy = still_busy = bool(queue.pending)
                    if still_busy:
                        self.executor.submit(self._drain, forecaster, queue, loop)
                    return
        except BaseException as exc:  # a bug here (or the loop closed): fail what waits
            logger.exception("inference queue of %s stopped", forecaster.manifest.name)
            with queue.lock:
                batch += queue.pending
                queue.pending.clear()
                queue.busy = False
            if not loop.is_closed():
                no_errors: list[BaseException | None] = [None] * len(batch)
                loop.call_soon_threadsafe(_deliver, batch, exc, no_errors)

    def _run(self, forecaster: Forecaster, windows: np.ndarray, positions: np.ndarray) -> ModelRows:
        started = time.perf_counter()
        output = forecaster.predict(windows, positions)
        if self.observe is not None:
            self.observe(forecaster.manifest.name, len(windows), time.perf_counter() - started)
        return model_rows(output)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)


def _inputs(
    forecaster: Forecaster,
    windows: list[Rows],
    positions: list[Sequence[float] | np.ndarray],
    checks: list[WindowCheck | None],
) -> tuple[np.ndarray, np.ndarray, list[BaseException | None]]:
    """Some requests' windows (B, L) and positions (B,) as one float32 array each, and each
    request's error (None for most): the batch is checked at once, and each request's own
    check runs only when the batch holds a window the model can't read."""
    stacked, places = input_arrays(
        [row for rows in windows for row in rows], [p for request in positions for p in request]
    )
    errors: list[BaseException | None] = [None] * len(windows)
    if not forecaster.accepts(stacked):
        start = 0
        for i, (rows, check) in enumerate(zip(windows, checks, strict=True)):
            end = start + len(rows)
            try:
                if check is not None:
                    check(stacked[start:end])
            except Exception as exc:
                errors[i] = exc
            start = end
    return stacked, places, errors


def _deliver(
    batch: list[_Pending],
    output: ModelRows | BaseException | None,
    errors: list[BaseException | None],
) -> None:
    """On the event loop: each request's rows of a batch's output, or its error (its own, or
    the batch's)."""
    start = 0
    for p, error in zip(batch, errors, strict=True):
        end = start + len(p.windows)
        if not p.future.done():  # its client may have gone away meanwhile
            if error is not None:
                p.future.set_exception(error)
            elif isinstance(output, BaseException):
                p.future.set_exception(output)
            elif output is not None:
                p.future.set_result(output.rows(start, end))
        start = end
