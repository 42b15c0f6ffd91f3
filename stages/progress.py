"""One progress line every few seconds for long loops: counts, rate and time left.

A user running `dvc repro` should never stare at a silent terminal for minutes; the lines go to
stderr so stage outputs on stdout stay parseable.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Progress:
    """`step()` once per item; prints at most one line per `every_s` seconds, and a last line."""

    def __init__(
        self, label: str, total: int, every_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()
        self._lock = threading.Lock()  # map_ordered steps it from several threads

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last >= self.every_s and self.done < self.total:
                self._last = now
                self._print(now)

    def close(self) -> None:
        self._print(time.monotonic(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        if final:
            tail = f"done in {elapsed:.1f} s"
        else:
            left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            tail = f"{100 * self.done / max(1, self.total):.0f} %, ~{left:.0f} s left"
        print(f"{self.label}: {self.done}/{self.total} ({tail})", file=self.stream, flush=True)


def track(items: Iterable[T], label: str, total: int, every_s: float = 5.0) -> Iterator[T]:
    """Yield `items`, reporting progress as they are consumed."""
    bar = Progress(label, total, every_s)
    for item in items:
        yield item
        bar.step()
    bar.close()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def map_ordered(
    fn: Callable[[T], R], items: Sequence[T], bar: Progress | None = None, workers: int = 1
) -> list[R]:
    """`fn(item)` for every item, results in item order, on `workers` threads. onnxruntime
    releases the GIL while a session runs, so two threads calling a 1-thread session use two
    cores without intra-op synchronisation (measured 1.2x on the float model, 1.8x on int8,
    against one call at a time on a 2-thread session); an exception in any call is raised here."""

    def one(item: T) -> R:
        out = fn(item)
        if bar is not None:
            bar.step()
        return out

    if workers <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))
