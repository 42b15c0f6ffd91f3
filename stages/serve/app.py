"""The HTTP layer: the Starlette app's routes, request bodies and JSON errors."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ocr_bundles_runtime.errors import ImageError

from .backends import Backend
from .service import Service
from .settings import Settings

log = logging.getLogger("stages.serve")  # one logger for the whole server

RECOGNIZE_PATH = "/v1/recognize"
DRAIN_LIMIT = 64 << 20  # an oversize body is read (and dropped) up to this, then cut off


class HttpError(Exception):
    """A refusal with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, detail: str, retryable: bool = False) -> None:
        self.status, self.code, self.detail, self.retryable = status, code, detail, retryable
        super().__init__(f"{status} {code}: {detail}")


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
