"""The server's settings: the one place their default values are written (the serve verb's
argparse defaults in stages/cli.py and stages/serve/command.py, and the server bench, read them
from here)."""

from __future__ import annotations

from dataclasses import dataclass

HOST = "127.0.0.1"  # the address served when none is given
PORT = 8080


@dataclass(frozen=True)
class Settings:
    """The HTTP layer's limits and batching knobs (the serve verb's options)."""

    workers: int = 2  # threads running the model (and preprocessing)
    batch: int = 8  # largest batch, batching backends only
    batch_wait_ms: float = 3.0  # how long the first item of a batch waits for company
    max_body_kb: int = 2048  # larger request bodies are refused with 413
    max_concurrency: int = 64  # more recognize requests in flight are refused with 503
    batching: bool = True  # False: never batch, even when the backend could

    def __post_init__(self) -> None:
        for name in ("workers", "batch", "max_body_kb", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
