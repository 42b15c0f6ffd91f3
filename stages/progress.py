"""One progress line every few seconds for long loops: counts, rate and time left.

A user running `dvc repro` should never stare at a silent terminal for minutes; the lines go to
stderr so stage outputs on stdout stay parseable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """`step()` once per item; prints at most one line per `every_s` seconds, and a last line."""

    def __init__(
        self, label: str, total: int, every_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()

    def step(self, n: int = 1) -> None:
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
