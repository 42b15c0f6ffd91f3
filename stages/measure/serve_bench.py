"""The server bench: throughput and latency of `python -m stages serve` under N clients, with
stock ddddocr served by the same HTTP layer (StockBackend) in the same run, so ratios are honest.

    python -m stages.measure.serve_bench --bundle bundles/high --images data/clean/eval \\
        --clients 1,4,16 --requests 400 [--batching on,off] [--out serve.json]

Every server is a fresh `python -m stages.serve` process pinned to the first half of the usable
cores (`machine.pinned_cores`); the client threads pin themselves to the rest (all of them when
there is a single core). Servers are started together and runs interleave (clients N: bundle
with batching, bundle without, stock; then the next N), so a slow spell of a noisy machine hits
every backend alike. Clients are urllib threads, one connection per request (as the runtime's
escalation makes them); each request is timed from send to parsed answer.

Batching on/off is measured only where the bundle's model takes a batch dimension; otherwise
the bundle runs once, unbatched, whatever `batching` asks.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ocr_bundles_runtime.manifest import find_bundle, parse_bundle

from ..errors import PipelineError
from ..records import ServedBundle, ServeRecord, ServeRun, ServeSettings, write_record
from ..serve.settings import Settings
from .machine import ROOT, machine_info, pinned_cores

START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
STDERR_TAIL = 2000
PATH = "/v1/recognize"


class ServeBenchError(PipelineError):
    """A server failed to start or the bench could not run; the message quotes its stderr."""


@dataclass(frozen=True)
class ServerSpec:
    backend: Literal["bundle", "stock"]
    batching: bool


class ServerProcess:
    """One `python -m stages.serve` child on a free loopback port."""

    def __init__(self, spec: ServerSpec, args: list[str], timeout_s: float) -> None:
        self.spec = spec
        self.errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stages.serve", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.errf,
            stdin=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            line = ""
        if " on http://" not in line:
            self.stop()
            raise ServeBenchError(f"{spec}: the server did not start ({line!r}): {self.stderr()}")
        self.url = line.rsplit(" on ", 1)[1].strip().removesuffix(PATH)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))

    def stderr(self) -> str:
        try:
            self.errf.seek(0)
            return self.errf.read().decode(errors="replace")[-STDERR_TAIL:]
        except ValueError:  # closed
            return ""

    def metrics(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=REQUEST_TIMEOUT_S) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.errf.close()


def post(url: str, data: bytes) -> tuple[str | None, float]:
    """(error code or None, latency in ms) of one recognition."""
    request = urllib.request.Request(
        url + PATH, data=data, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            body = json.loads(response.read())
        code = None if isinstance(body.get("text"), str) else "E_NO_TEXT"
    except urllib.error.HTTPError as e:
        try:
            code = json.loads(e.read()).get("code") or f"HTTP_{e.code}"
        except (ValueError, OSError, AttributeError):
            code = f"HTTP_{e.code}"
    except (OSError, ValueError) as e:  # refused, reset, timed out, garbled
        code = f"CLIENT_{type(e).__name__}"
    return code, (time.perf_counter() - t0) * 1e3


def drive(
    url: str, images: list[bytes], clients: int, requests: int, cores: list[int]
) -> dict[str, Any]:
    """`requests` recognitions from `clients` threads (request i sends image i mod len)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Counter[str]] = [Counter() for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        if cores:
            os.sched_setaffinity(0, cores)  # this thread only
        start.wait()
        for i in range(k, requests, clients):
            code, ms = post(url, images[i % len(images)])
            if code is None:
                latencies[k].append(ms)
            else:
                errors[k][code] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([ms for per in latencies for ms in per])
    total_errors = sum(errors, Counter())
    return {
        "requests": requests,
        "ok": int(lat.size),
        "errors": dict(total_errors),
        "wall_s": round(wall, 3),
        "throughput_rps": round(lat.size / wall, 2) if wall > 0 else None,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "p95": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
        },
    }


def serve_bench(
    bundle: Path,
    images: list[Path],
    clients: list[int],
    requests: int,
    batching: list[bool],
    *,
    stock: bool = True,
    stock_requests: int | None = None,
    workers: int = Settings.workers,
    batch: int = Settings.batch,
    batch_wait_ms: float = Settings.batch_wait_ms,
    server_cores: int | None = None,
    warmup: int = 8,
    start_timeout_s: float = START_TIMEOUT_S,
) -> ServeRecord:
    """Throughput (recognitions/s), latency p50/p95 and errors per (backend, batching, clients).

    stock: also serve stock ddddocr (StockBackend) and drive it the same way, `stock_requests`
    requests per run (default `requests`; ddddocr is slow, a test may ask for a handful).
    server_cores: how many of the usable cores the servers get (default half, at least one)."""
    if not images:
        raise ServeBenchError("no images to send")
    if not clients or min(clients) < 1 or requests < 1:
        raise ServeBenchError(f"clients {clients} and requests {requests} must be positive")
    root = find_bundle(bundle)
    spec = parse_bundle(root)
    pool = [p.read_bytes() for p in images]
    usable = sorted(os.sched_getaffinity(0))
    s_cores = pinned_cores(server_cores or max(1, len(usable) // 2), usable)
    c_cores = [c for c in usable if c not in s_cores] or usable
    common = [
        *("--workers", str(workers), "--batch", str(batch)),
        *("--batch-wait-ms", str(batch_wait_ms), "--cores", ",".join(map(str, s_cores))),
    ]
    wanted = sorted(set(batching), reverse=True) if spec.batch else [False]
    specs = [ServerSpec("bundle", b) for b in wanted]
    if stock:
        specs.append(ServerSpec("stock", False))
    servers: list[ServerProcess] = []
    runs: list[ServeRun] = []
    try:
        for s in specs:
            args = ["--backend", s.backend, *common]
            if s.backend == "bundle":
                args += ["--bundle", str(root)]
            if not s.batching:
                args.append("--no-batching")
            servers.append(ServerProcess(s, args, start_timeout_s))
        for server in servers:  # first calls load lazily-built state; keep them out of the runs
            for i in range(warmup):
                post(server.url, pool[i % len(pool)])
        for n in clients:  # interleaved: every backend at N clients, then the next N
            for server in servers:
                runs.append(_run(server, pool, n, requests, stock_requests, c_cores))
    finally:
        failed = [(s.spec, s.stderr()) for s in servers if s.proc.poll() not in (None, 0)]
        for server in servers:
            server.stop()
    if failed:
        raise ServeBenchError(f"a server died during the bench: {failed}")
    return ServeRecord(
        machine=machine_info(),
        bundle=ServedBundle(
            path=str(root),
            target=spec.manifest.target,
            batch=spec.batch,
            formats=list(spec.manifest.formats),
        ),
        images=len(pool),
        settings=ServeSettings(
            workers=workers,
            batch=batch,
            batch_wait_ms=batch_wait_ms,
            server_cores=s_cores,
            client_cores=c_cores,
            requests=requests,
            stock_requests=(stock_requests or requests) if stock else None,
            warmup=warmup,
        ),
        runs=with_ratios(runs),
    )


def _run(
    server: ServerProcess,
    pool: list[bytes],
    clients: int,
    requests: int,
    stock_requests: int | None,
    cores: list[int],
) -> ServeRun:
    n = (stock_requests or requests) if server.spec.backend == "stock" else requests
    before = server.metrics()
    result = drive(server.url, pool, clients, n, cores)
    after = server.metrics()
    batches = after["batches"] - before["batches"]
    items = after["batched_items"] - before["batched_items"]
    return ServeRun(
        backend=server.spec.backend,
        batching=server.spec.batching,
        clients=clients,
        **result,
        batches=batches,
        mean_batch_size=round(items / batches, 3) if batches else None,
    )


def with_ratios(runs: list[ServeRun]) -> list[ServeRun]:
    """Each run's throughput and p50 as a multiple of stock's at the same clients."""
    stock = {r.clients: r for r in runs if r.backend == "stock"}
    out = []
    for r in runs:
        base = stock.get(r.clients)
        ratios = {
            "throughput_vs_stock": _ratio(r.throughput_rps, base and base.throughput_rps),
            "p50_vs_stock": _ratio(r.latency_ms.p50, base and base.latency_ms.p50),
        }
        out.append(r.model_copy(update=ratios))
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def serve_table(result: ServeRecord) -> str:
    """A markdown table of the runs, with the machine and settings under it."""
    rows = [
        "| backend | batching | clients | recognitions/s | p50 ms | p95 ms | mean batch "
        "| errors | throughput vs stock |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result.runs:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
        rows.append(
            f"| {r.backend} | {'on' if r.batching else 'off'} | {r.clients} "
            f"| {_fmt(r.throughput_rps, 1)} | {_fmt(r.latency_ms.p50, 2)} "
            f"| {_fmt(r.latency_ms.p95, 2)} | {_fmt(r.mean_batch_size, 2)} "
            f"| {errors} | {_fmt(r.throughput_vs_stock, 2, 'x')} |"
        )
    m, s = result.machine, result.settings
    rows.append("")
    rows.append(
        f"{m['cpu']} ({m['usable_cores']} usable cores); server pinned to cores "
        f"{s.server_cores}, clients to {s.client_cores}; {s.workers} worker threads, "
        f"batch {s.batch}, wait {s.batch_wait_ms} ms; {s.requests} requests per run"
        + (f" ({s.stock_requests} for stock)" if s.stock_requests else "")
        + f", {result.images} images, one connection per request."
        + (
            ""
            if result.bundle.batch
            else " No batched rows: this bundle's model has a fixed batch of 1, so the server "
            "runs requests one by one on its worker pool (batching needs a model with a batch "
            "dimension; tests/test_serve.py checks it on one)."
        )
    )
    return "\n".join(rows) + "\n"


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _images(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.measure.serve_bench")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True, help="files or folders")
    p.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=400, help="per run")
    p.add_argument("--stock-requests", type=int, help="per stock run (default --requests)")
    p.add_argument("--batching", default="on,off", help="on, off or on,off")
    p.add_argument("--no-stock", action="store_true")
    p.add_argument("--workers", type=int, default=Settings.workers)
    p.add_argument("--batch", type=int, default=Settings.batch)
    p.add_argument("--batch-wait-ms", type=float, default=Settings.batch_wait_ms)
    p.add_argument("--server-cores", type=int)
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    try:
        result = serve_bench(
            args.bundle,
            _images(args.images),
            [int(c) for c in args.clients.split(",")],
            args.requests,
            [b.strip() == "on" for b in args.batching.split(",")],
            stock=not args.no_stock,
            stock_requests=args.stock_requests,
            workers=args.workers,
            batch=args.batch,
            batch_wait_ms=args.batch_wait_ms,
            server_cores=args.server_cores,
        )
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        write_record(args.out, result)
    print(serve_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
