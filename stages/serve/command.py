"""The serve verb: settings and backend from the arguments, bind, print the address, serve;
and `python -m stages.serve`'s own parser."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from . import __doc__ as package_doc
from .app import RECOGNIZE_PATH, build_app
from .backends import Backend, BundleBackend, ServeError, StockBackend
from .settings import HOST, PORT, Settings

log = logging.getLogger("stages.serve")  # one logger for the whole server


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
    description = package_doc.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m stages.serve", description=description)
    p.add_argument("--bundle", help="bundle folder to serve (required unless --backend stock)")
    p.add_argument("--backend", choices=("bundle", "stock"), default="bundle")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--workers", type=int, default=Settings.workers)
    p.add_argument("--batch", type=int, default=Settings.batch)
    p.add_argument("--batch-wait-ms", type=float, default=Settings.batch_wait_ms)
    p.add_argument("--max-body-kb", type=int, default=Settings.max_body_kb)
    p.add_argument("--max-concurrency", type=int, default=Settings.max_concurrency)
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
