"""The state behind one app: worker threads, the dynamic batch queue and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends import Backend, Prepared
from .settings import Settings

LATENCY_WINDOW = 10_000  # latency percentiles cover the latest this many requests


class Metrics:
    """Counters kept on the event loop only (no lock needed)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.batches = 0  # session runs (a single-image call counts as a batch of one)
        self.batched_items = 0
        self.in_flight = 0

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latency_ms)
        return {
            "requests": self.requests,
            "errors": dict(self.errors),
            "latency_ms": {f"p{q}": _percentile(lat, q) for q in (50, 95, 99)},
            "batches": self.batches,
            "batched_items": self.batched_items,
            "mean_batch_size": (
                round(self.batched_items / self.batches, 3) if self.batches else None
            ),
            "in_flight": self.in_flight,
        }


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return round(ordered[k], 3)


class Service:
    """The state behind one app: backend, worker threads, batch queue and metrics."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.batching = settings.batching and backend.batchable
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="serve")
        self.queue: asyncio.Queue[tuple[Prepared, asyncio.Future]] | None = None
        self.slots: asyncio.Semaphore | None = None
        self.batcher: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()
        self.preparing = 0  # batching requests being preprocessed, not queued yet

    # ---- lifecycle

    def start(self) -> None:
        """Start the batcher on the running loop (idempotent; also done on first request)."""
        if self.batching and self.batcher is None:
            self.queue = asyncio.Queue()
            self.slots = asyncio.Semaphore(self.settings.workers)
            self.batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.batcher
            self.batcher = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---- recognition

    async def recognize(self, data: bytes) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if not self.batching:
            answer = await loop.run_in_executor(self.executor, self.backend.recognize, data)
            self.metrics.batches += 1
            self.metrics.batched_items += 1
            return answer
        self.start()
        assert self.queue is not None
        self.preparing += 1  # the batcher waits for these, and only these
        try:
            prepared = await loop.run_in_executor(self.executor, self.backend.prepare, data)
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self.queue.put_nowait((prepared, future))
        finally:
            self.preparing -= 1
        return await future

    async def _batch_loop(self) -> None:
        assert self.queue is not None and self.slots is not None
        loop = asyncio.get_running_loop()
        limit, wait_s = self.settings.batch, self.settings.batch_wait_ms / 1e3
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + wait_s
            while len(items) < limit:
                left = deadline - loop.time()
                if left <= 0 or (self.queue.empty() and not self.preparing):
                    break  # waiting longer would only add latency: nobody else is coming
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            await self.slots.acquire()  # at most `workers` batches run at once
            while len(items) < limit and not self.queue.empty():
                items.append(self.queue.get_nowait())  # arrived while every slot was busy
            task = loop.create_task(self._run_batch(items))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run_batch(self, items: list[tuple[Prepared, asyncio.Future]]) -> None:
        assert self.slots is not None
        loop = asyncio.get_running_loop()
        try:
            answers, sizes = await loop.run_in_executor(
                self.executor, self.backend.run_batch, [p for p, _ in items]
            )
            self.metrics.batches += len(sizes)
            self.metrics.batched_items += sum(sizes)
            for (_, future), answer in zip(items, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        except Exception as e:  # every waiting request gets the error (logged once per request)
            for _, future in items:
                if not future.done():
                    future.set_exception(e)
        finally:
            self.slots.release()
