"""What the server serves: a Backend answers one image or one batch of preprocessed images,
from a bundle's Recognizer (BundleBackend) or from stock ddddocr (StockBackend)."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ocr_bundles_runtime.errors import ImageError, PipelineError

if TYPE_CHECKING:
    import numpy as np

    from ocr_bundles_runtime.recognizer import Recognizer, Result

log = logging.getLogger("stages.serve")  # one logger for the whole server

CONFIDENT = ("ok", "low_confidence_fallback")  # Recognizer statuses the server answers "ok"


class ServeError(PipelineError):
    """The server cannot start (the address is taken or not ours), or a backend was asked to
    batch although its model cannot: exit code 2 in the CLI."""


@dataclass(frozen=True)
class Prepared:
    """One preprocessed request waiting for a batch."""

    data: bytes
    x: np.ndarray  # [1, C, H, W]
    t0: float  # perf_counter before preprocessing
    t1: float  # perf_counter after it


class Backend(ABC):
    """What the HTTP layer serves. `recognize` and `run_batch` run on worker threads."""

    batchable: bool = False  # prepare/run_batch work: the model takes a batch dimension

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """{target, model, model_file, formats} for /healthz."""

    @abstractmethod
    def recognize(self, data: bytes) -> dict[str, Any]:
        """One image's answer {text, confidence, status, model, timings_ms}; ImageError if bad."""

    def prepare(self, data: bytes) -> Prepared:
        """One image decoded and preprocessed for run_batch; only where `batchable`."""
        raise self._unbatchable()

    def warm(self) -> None:
        """One recognition before the first request, so it pays no lazy imports."""
        self.recognize(blank_png())

    def run_batch(self, items: list[Prepared]) -> tuple[list[dict[str, Any]], list[int]]:
        """Answers in order, and the size of each session run made."""
        raise self._unbatchable()

    def _unbatchable(self) -> ServeError:
        return ServeError(
            f"{type(self).__name__} does not batch (its model has a fixed batch of 1); "
            "check `batchable` before calling prepare or run_batch"
        )


class BundleBackend(Backend):
    """A bundle's Recognizer, with escalation switched off: the server is the last step."""

    def __init__(self, recognizer: Recognizer) -> None:
        if recognizer.escalation_url:
            log.info("serve: ignoring the bundle's escalation url %s", recognizer.escalation_url)
        recognizer.escalation_url = None  # never forward to another server (or to itself)
        self.recognizer = recognizer
        self.batchable = recognizer.spec.batch

    def health(self) -> dict[str, Any]:
        spec, rec = self.recognizer.spec, self.recognizer
        return {
            "target": spec.manifest.target,
            "model": rec.model,
            "model_file": rec.model_file,
            "formats": list(spec.manifest.formats),
            "confidence_threshold": spec.threshold,
        }

    def recognize(self, data: bytes) -> dict[str, Any]:
        return answer_of(self.recognizer.predict(data))

    def prepare(self, data: bytes) -> Prepared:
        t0 = time.perf_counter()
        x = self.recognizer.prepare(data)
        return Prepared(data, x, t0, time.perf_counter())

    def run_batch(self, items: list[Prepared]) -> tuple[list[dict[str, Any]], list[int]]:
        """Items grouped by tensor shape (equal widths), one session run per group."""
        import numpy as np

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(tuple(item.x.shape), []).append(i)
        out: list[dict[str, Any] | None] = [None] * len(items)
        sizes = []
        for idx in groups.values():
            passes = self.recognizer.infer(np.concatenate([items[i].x for i in idx]))
            sizes.append(len(idx))
            for i, first in zip(idx, passes, strict=True):
                it = items[i]
                out[i] = answer_of(self.recognizer.finish(it.data, it.x, first, it.t0, it.t1))
        return [a for a in out if a is not None], sizes


class StockBackend(Backend):
    """Stock ddddocr (beta model) behind the same HTTP layer: the bench's honest baseline."""

    def __init__(self) -> None:
        import ddddocr

        self.ocr = ddddocr.DdddOcr(beta=True, show_ad=False)

    def health(self) -> dict[str, Any]:
        from importlib import metadata

        return {
            "target": "stock",
            "model": f"ddddocr {metadata.version('ddddocr')} beta",
            "model_file": None,
            "formats": ["onnx"],
        }

    def recognize(self, data: bytes) -> dict[str, Any]:
        import io

        from PIL import Image

        t0 = time.perf_counter()
        if not data:
            raise ImageError("E_EMPTY", "0 bytes")
        try:
            with Image.open(io.BytesIO(data)) as im:  # the header only: refuse garbage early
                width, height = im.size
        except Exception as e:
            raise ImageError("E_DECODE", f"{type(e).__name__}: {e}") from e
        if width < 1 or height < 1:
            raise ImageError("E_DECODE", f"invalid size {width}x{height}")
        text = self.ocr.classification(data)
        return {
            "text": text,
            "confidence": None,  # ddddocr does not say
            "status": "ok",
            "model": "stock",
            "timings_ms": {"total": round((time.perf_counter() - t0) * 1e3, 3)},
            "events": [],
        }


def blank_png(width: int = 96, height: int = 32) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return buf.getvalue()


def answer_of(result: Result) -> dict[str, Any]:
    """The JSON answer of a Recognizer Result: "ok" only when the server is confident."""
    return {
        "text": result.text,
        "confidence": result.confidence,
        "status": "ok" if result.status in CONFIDENT else "low_confidence",
        "model": result.model,
        "timings_ms": result.timings_ms,
        "events": list(result.events),
    }
