"""The recognition server: the last step of the runtime's fallback chain.

    python -m stages serve --bundle bundles/high --port 8080

`POST /v1/recognize` takes the raw image bytes as the body and answers
{text, confidence, status, model, timings_ms, request_id, events}. `status` is "ok" when the
served bundle is confident (after its own fallback rerun), "low_confidence" when it is not: a
runtime escalating here takes the text only on "ok" (ocr_bundles_runtime/escalate.py), so an
unsure server never overrules an app's local guess. The server's own Recognizer never escalates.

`GET /healthz` -> {status, target, model, model_file, formats, batching}; `GET /metrics` ->
{requests, errors: {code: n}, latency_ms: {p50, p95, p99}, batches (session runs),
batched_items, mean_batch_size, in_flight}.

Errors are JSON {code, detail, retryable}, never a traceback: 400 for an unusable image (the
runtime's ImageError codes E_EMPTY, E_DECODE, E_INPUT), 413 E_TOO_LARGE (body over
--max-body-kb, or an image over the bundle's pixel limit), 415 E_INPUT for a multipart body,
503 E_BUSY past --max-concurrency requests in flight, 500 E_INTERNAL (logged with its traceback
and the request id).

Dynamic batching (models that accept a batch dimension, manifest input.batch): each request is
preprocessed on the worker threads, queued, and one batcher task collects up to --batch items
for at most --batch-wait-ms (it stops waiting as soon as no other request is on its way, so a
lone client pays no wait); items of equal tensor width run as ONE session run (padding would
change the CTC outputs), at most --workers batches at a time. Other models run
`Recognizer.predict` per request on --workers threads. Model work never runs on the event loop.

`python -m stages.serve` is the same server with two extra options the bench uses: --backend
stock (stock ddddocr behind the same HTTP layer) and --no-batching, and --cores to pin it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ocr_bundles_runtime.errors import ImageError, PipelineError

if TYPE_CHECKING:
    import numpy as np

    from ocr_bundles_runtime.recognizer import Recognizer, Result

log = logging.getLogger(__name__)

RECOGNIZE_PATH = "/v1/recognize"
LATENCY_WINDOW = 10_000  # latency percentiles cover the latest this many requests
DRAIN_LIMIT = 64 << 20  # an oversize body is read (and dropped) up to this, then cut off
CONFIDENT = ("ok", "low_confidence_fallback")  # Recognizer statuses the server answers "ok"


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


class ServeError(PipelineError):
    """The server cannot start (the address is taken or not ours), or a backend was asked to
    batch although its model cannot: exit code 2 in the CLI."""


class HttpError(Exception):
    """A refusal with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, detail: str, retryable: bool = False) -> None:
        self.status, self.code, self.detail, self.retryable = status, code, detail, retryable
        super().__init__(f"{status} {code}: {detail}")


# ---------------------------------------------------------------------------- backends


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


# ---------------------------------------------------------------------------- the HTTP layer


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


def build_app(backend: Backend, settings: Settings | None = None) -> Starlette:
    """The Starlette app serving `backend`; its Service is `app.state.service`."""
    settings = settings or Settings()
    service = Service(backend, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        yield
        await service.stop()

    async def recognize(request: Request) -> JSONResponse:
        return await _recognize(service, request)

    async def healthz(request: Request) -> JSONResponse:
        return _json(200, {"status": "ok", **backend.health(), "batching": service.batching})

    async def metrics(request: Request) -> JSONResponse:
        return _json(200, service.metrics.snapshot())

    app = Starlette(
        routes=[
            Route(RECOGNIZE_PATH, recognize, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


async def _recognize(service: Service, request: Request) -> JSONResponse:
    t0 = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    m = service.metrics
    m.requests += 1
    if m.in_flight >= service.settings.max_concurrency:
        m.errors["E_BUSY"] += 1
        detail = f"{m.in_flight} requests in flight (limit {service.settings.max_concurrency})"
        return _error(HttpError(503, "E_BUSY", detail, retryable=True), request_id)
    m.in_flight += 1
    try:
        data = await _read_body(request, service.settings.max_body_kb * 1024)
        answer = await service.recognize(data)
        return _json(200, {**answer, "request_id": request_id})
    except HttpError as e:
        m.errors[e.code] += 1
        return _error(e, request_id)
    except ImageError as e:
        m.errors[e.code] += 1
        status = 413 if e.code == "E_TOO_LARGE" else 400
        return _error(HttpError(status, e.code, e.detail, e.retryable), request_id)
    except ClientDisconnect:  # gone before its body arrived: nobody reads this answer
        m.errors["E_DISCONNECT"] += 1
        return _error(HttpError(400, "E_DISCONNECT", "client disconnected"), request_id)
    except Exception:
        m.errors["E_INTERNAL"] += 1
        log.exception("request %s: internal error", request_id)
        return _error(_INTERNAL, request_id)
    finally:
        m.in_flight -= 1
        m.latency_ms.append((time.perf_counter() - t0) * 1e3)


_INTERNAL = HttpError(500, "E_INTERNAL", "internal server error; see the server log", True)


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 once it passes `limit` bytes (the rest is read and dropped, up to
    DRAIN_LIMIT, so the client gets the answer instead of a reset connection)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise HttpError(415, "E_INPUT", "send the raw image bytes as the body, not a form")
    declared = request.headers.get("content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_large = True
        if too_large:
            if size > DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if too_large:
        shown = declared if declared is not None else f"over {size}"
        raise HttpError(413, "E_TOO_LARGE", f"body of {shown} bytes > limit {limit} bytes")
    return b"".join(chunks)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _error(e: HttpError, request_id: str) -> JSONResponse:
    body = {"code": e.code, "detail": e.detail, "retryable": e.retryable, "request_id": request_id}
    headers = {"Retry-After": "1"} if e.code == "E_BUSY" else None
    return _json(e.status, body, headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method) as JSON too."""
    status = getattr(exc, "status_code", 500)
    code = {404: "E_NOT_FOUND", 405: "E_METHOD"}.get(status, f"E_HTTP_{status}")
    detail = f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}"
    return _error(HttpError(status, code, detail), request.headers.get("x-request-id") or "-")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything that escaped a route: logged with its traceback, answered without it."""
    log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
    return _error(_INTERNAL, request.headers.get("x-request-id") or "-")


# ---------------------------------------------------------------------------- the verb


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(
        workers=args.workers,
        batch=args.batch,
        batch_wait_ms=args.batch_wait_ms,
        max_body_kb=args.max_body_kb,
        max_concurrency=args.max_concurrency,
        batching=not getattr(args, "no_batching", False),
    )


def make_backend(args: argparse.Namespace) -> Backend:
    if getattr(args, "backend", "bundle") == "stock":
        return StockBackend()
    from ocr_bundles_runtime.recognizer import Recognizer

    return BundleBackend(Recognizer.from_bundle(args.bundle))


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the bundle, bind, print one `serve: ... on http://HOST:PORT` line, serve until
    SIGINT/SIGTERM. --port 0 picks a free port (the printed line names it)."""
    import socket

    import uvicorn

    backend = make_backend(args)
    settings = settings_of(args)
    try:
        backend.warm()
    except Exception as e:  # a model that cannot read a blank image may still serve captchas
        log.warning("serve: warm-up failed (%s: %s); serving anyway", type(e).__name__, e)
    app = build_app(backend, settings)
    if getattr(args, "cores", None):
        _confine_threads(args.cores)  # the session's threads exist now
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
    health = backend.health()
    batching = "batching" if app.state.service.batching else "no batching"
    print(f"serve: {health['target']} ({health['model_file'] or health['model']}, {batching}) "
          f"on {url}{RECOGNIZE_PATH}", flush=True)  # fmt: skip
    config = uvicorn.Config(
        app, log_level=getattr(args, "log_level", "warning"), access_log=False, lifespan="on"
    )
    # the runtime logs each unsure image at INFO; the answer's events already say it
    runtime_log = logging.getLogger("ocr_bundles_runtime.recognizer")
    level = runtime_log.level
    runtime_log.setLevel(logging.WARNING)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        runtime_log.setLevel(level)
    return 0


def _confine_threads(cores: list[int]) -> None:
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(tid), cores)


def main(argv: list[str] | None = None) -> int:
    """`python -m stages.serve`: the serve verb plus --backend, --no-batching and --cores."""
    p = argparse.ArgumentParser(prog="python -m stages.serve", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", help="bundle folder to serve (required unless --backend stock)")
    p.add_argument("--backend", choices=("bundle", "stock"), default="bundle")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=3.0)
    p.add_argument("--max-body-kb", type=int, default=2048)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--no-batching", action="store_true", help="never batch")
    p.add_argument("--cores", help="comma-separated CPU ids to pin the server to")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.backend == "bundle" and not args.bundle:
        p.error("--bundle is required for the bundle backend")
    if args.cores:
        args.cores = [int(c) for c in args.cores.split(",")]
        os.sched_setaffinity(0, args.cores)  # before onnxruntime starts any thread
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return cmd_serve(args)


if __name__ == "__main__":
    sys.exit(main())
