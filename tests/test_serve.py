"""The recognition server (stages/serve/) over loopback: in-process servers on a background
thread for the HTTP behaviour, `python -m stages serve` subprocesses where the process itself
matters (the verb, a killed server, resident memory under load). Every call has a timeout."""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import builders
import numpy as np
import pytest
import tiny
import uvicorn
from PIL import Image

from ocr_bundles_runtime import Recognizer
from stages.serve.app import RECOGNIZE_PATH, HttpError, build_app
from stages.serve.backends import BundleBackend, ServeError, StockBackend
from stages.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
HTTP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------- helpers


@contextmanager
def live(app: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port from a background thread; yields the base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def serve_process(bundle: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m stages serve --port 0` as a subprocess; yields it and its base URL."""
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    cmd = [sys.executable, "-m", "stages", "serve", "--bundle", str(bundle), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x.decode()) for x in proc.stdout], daemon=True
    ).start()
    try:
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            line = ""
        if "http://" not in line:
            proc.kill()
            proc.wait(10)
            errf.seek(0)
            pytest.fail(f"serve did not start: {line!r} {errf.read().decode()[-2000:]}")
        url = line.split(" on ")[-1].strip().removesuffix(RECOGNIZE_PATH)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        errf.close()


def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + RECOGNIZE_PATH,
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200
        return json.loads(response.read())


def get_error(url: str, path: str) -> tuple[int, str]:
    try:
        urllib.request.urlopen(url + path, timeout=HTTP_TIMEOUT_S).close()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["code"]
    raise AssertionError(f"GET {path} succeeded")


def png(width: int, height: int = 16, seed: int = 0) -> bytes:
    """Random black and white 8x8 blocks: the tiny models' texts vary with them (on plain
    noise they all read the same letter)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (-(-height // 8), -(-width // 8)), dtype=np.uint8) * 255
    pixels = np.kron(blocks, np.ones((8, 8), np.uint8))[:height, :width]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def noise_images(n: int, widths: tuple[int, ...] = (40, 48, 64)) -> list[bytes]:
    return [png(widths[i % len(widths)], seed=i) for i in range(n)]


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The default tiny model: no batch dimension."""
    return builders.tiny_bundle(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def batchable(tmp_path_factory) -> Path:
    model = tiny.tiny_ctc(batch=True, wrong_output_shape=False)
    return builders.tiny_bundle(tmp_path_factory.mktemp("batch"), model=model)


@pytest.fixture(scope="module")
def confident(tmp_path_factory) -> Path:
    """Threshold 0: the server is sure of every image, so it answers "ok"."""
    root = tmp_path_factory.mktemp("confident")
    return builders.tiny_bundle(root, bundle={"confidence_threshold": 0.0})


@pytest.fixture(scope="module")
def unsure(tmp_path_factory) -> Path:
    """Threshold 0.999: every image escalates (same tiny model as `confident`)."""
    root = tmp_path_factory.mktemp("unsure")
    fields = {"confidence_threshold": 0.999, "formats": ["onnx"], "fallback": "none"}
    return builders.tiny_bundle(root, bundle=fields)


# ---------------------------------------------------------------------------- the HTTP layer


def test_round_trip_equals_the_in_process_recognizer(plain):
    rec = Recognizer.from_bundle(plain)
    backend = BundleBackend(Recognizer.from_bundle(plain))
    assert not backend.batchable
    images = noise_images(6)
    with live(build_app(backend, Settings(workers=2))) as url:
        for i, data in enumerate(images):
            code, body = post(url, data, {"X-Request-Id": f"req-{i}"})
            local = rec.predict(data)
            assert code == 200, body
            assert body["text"] == local.text
            assert body["confidence"] == pytest.approx(local.confidence, abs=1e-6)
            assert body["status"] == ("ok" if local.status == "ok" else "low_confidence")
            assert body["model"] == "primary"
            assert body["request_id"] == f"req-{i}"
            assert set(body["timings_ms"]) >= {"preprocess", "infer", "decode", "total"}
        metrics = get(url, "/metrics")
    assert metrics["requests"] == 6 and metrics["errors"] == {}
    assert metrics["batches"] == 6 and metrics["mean_batch_size"] == 1.0


def test_batching_gives_the_texts_of_single_calls(batchable):
    rec = Recognizer.from_bundle(batchable)
    assert rec.spec.batch
    images = noise_images(24)  # three widths: grouped, never padded together
    expected = [rec.predict(data) for data in images]
    assert len({r.text for r in expected}) > 1, "the check needs varied texts"
    settings = Settings(workers=2, batch=8, batch_wait_ms=50)
    with live(build_app(BundleBackend(rec), settings)) as url:
        assert get(url, "/healthz")["batching"] is True
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda d: post(url, d), images))
        metrics = get(url, "/metrics")
    for (code, body), want in zip(answers, expected, strict=True):
        assert code == 200, body
        assert body["text"] == want.text
        assert body["confidence"] == pytest.approx(want.confidence, abs=1e-5)
    assert metrics["errors"] == {}
    assert metrics["batches"] < len(images)
    assert metrics["mean_batch_size"] > 1


def test_no_batching_switch_runs_one_by_one(batchable):
    backend = BundleBackend(Recognizer.from_bundle(batchable))
    with live(build_app(backend, Settings(batching=False))) as url:
        assert get(url, "/healthz")["batching"] is False
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda d: post(url, d), noise_images(8)))
        assert all(code == 200 for code, _ in answers)
        assert get(url, "/metrics")["mean_batch_size"] == 1.0


@pytest.mark.parametrize("which", ["plain", "batchable"])
def test_bad_images_are_4xx_with_their_code(which, request):
    bundle = request.getfixturevalue(which)
    backend = BundleBackend(Recognizer.from_bundle(bundle))
    strip = png(400_000, height=1)  # small file, but resizes past the pixel limit
    cases = [
        (b"", 400, "E_EMPTY"),
        (b"this is not an image", 400, "E_DECODE"),
        (png(48)[:40], 400, "E_DECODE"),  # a truncated PNG
        (strip, 413, "E_TOO_LARGE"),
    ]
    with live(build_app(backend, Settings(batch_wait_ms=1))) as url:
        for data, status, code in cases:
            got, body = post(url, data)
            assert (got, body["code"]) == (status, code), body
            assert body["retryable"] is False and body["detail"]
        got, body = post(url, png(48), {"Content-Type": "multipart/form-data; boundary=x"})
        assert (got, body["code"]) == (415, "E_INPUT")
        assert post(url, png(48))[0] == 200  # the server is fine afterwards
        metrics = get(url, "/metrics")
    assert metrics["errors"] == {"E_EMPTY": 1, "E_DECODE": 2, "E_TOO_LARGE": 1, "E_INPUT": 1}


def test_oversize_body_is_413(plain):
    backend = BundleBackend(Recognizer.from_bundle(plain))
    with live(build_app(backend, Settings(max_body_kb=4))) as url:
        for size in (4 * 1024 + 1, 3 << 20):  # just over, and far over (read and dropped)
            code, body = post(url, b"\0" * size)
            assert (code, body["code"]) == (413, "E_TOO_LARGE"), body
            assert "limit 4096 bytes" in body["detail"]
        assert post(url, png(48))[0] == 200  # just under the limit is served


def test_healthz_and_metrics_shapes(batchable):
    rec = Recognizer.from_bundle(batchable)
    with live(build_app(BundleBackend(rec))) as url:
        health = get(url, "/healthz")
        post(url, png(48))
        post(url, b"")
        metrics = get(url, "/metrics")
        not_found, wrong_method = get_error(url, "/nope"), get_error(url, RECOGNIZE_PATH)
    assert health == {
        "status": "ok",
        "target": "tiny",
        "model": "primary",
        "model_file": "model.onnx",
        "formats": ["onnx"],
        "confidence_threshold": 0.5,
        "batching": True,
    }
    assert set(metrics) == {
        "requests",
        "errors",
        "latency_ms",
        "batches",
        "batched_items",
        "mean_batch_size",
        "in_flight",
    }
    assert metrics["requests"] == 2 and metrics["errors"] == {"E_EMPTY": 1}
    assert (not_found, wrong_method) == ((404, "E_NOT_FOUND"), (405, "E_METHOD"))
    lat = metrics["latency_ms"]
    assert set(lat) == {"p50", "p95", "p99"}
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert metrics["batches"] == 1 and metrics["mean_batch_size"] == 1.0
    assert metrics["in_flight"] == 0


@pytest.mark.parametrize("which", ["plain", "batchable"])
def test_internal_error_is_500_without_traceback(which, request, monkeypatch, caplog):
    backend = BundleBackend(Recognizer.from_bundle(request.getfixturevalue(which)))

    def boom(*args: Any) -> Any:
        raise RuntimeError("secret internals exploded")

    monkeypatch.setattr(backend, "run_batch" if backend.batchable else "recognize", boom)
    with live(build_app(backend)) as url:
        code, body = post(url, png(48), {"X-Request-Id": "abc123"})
        metrics = get(url, "/metrics")
    assert code == 500
    assert body["code"] == "E_INTERNAL" and body["retryable"] is True
    assert body["request_id"] == "abc123"
    text = json.dumps(body)
    assert "Traceback" not in text and "secret" not in text and "RuntimeError" not in text
    assert "secret internals exploded" in caplog.text  # logged server-side, with the id
    assert "abc123" in caplog.text
    assert metrics["errors"] == {"E_INTERNAL": 1}


def test_past_max_concurrency_is_503_busy(plain):
    backend = BundleBackend(Recognizer.from_bundle(plain))
    real = backend.recognize

    def slow(data: bytes) -> dict:
        time.sleep(0.5)
        return real(data)

    backend.recognize = slow  # type: ignore[method-assign]
    with live(build_app(backend, Settings(workers=2, max_concurrency=1))) as url:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda d: post(url, d), [png(48)] * 3))
        codes = sorted(code for code, _ in answers)
        busy = [body for code, body in answers if code == 503]
        metrics = get(url, "/metrics")
    assert codes[0] == 200 and 503 in codes
    assert busy[0]["code"] == "E_BUSY" and busy[0]["retryable"] is True
    assert metrics["errors"]["E_BUSY"] == codes.count(503)


def test_verb_refuses_a_taken_port(plain):
    import argparse
    import socket

    from stages.serve.command import cmd_serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = argparse.Namespace(
            bundle=plain,
            host="127.0.0.1",
            port=port,
            workers=1,
            batch=8,
            batch_wait_ms=3.0,
            max_body_kb=64,
            max_concurrency=4,
        )
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            cmd_serve(args)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="workers"):
        Settings(workers=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        Settings(batch_wait_ms=-1)
    assert HttpError(413, "E_TOO_LARGE", "x").status == 413


def test_every_parser_takes_its_defaults_from_settings():
    """The serve verb, `python -m stages.serve` and the bench default to Settings' values."""
    import inspect
    from unittest import mock

    from stages import cli
    from stages.measure import serve_bench
    from stages.serve import command

    defaults = Settings()
    verb = vars(cli.parser().parse_args(["serve", "--bundle", "b"]))
    for name in ("workers", "batch", "batch_wait_ms", "max_body_kb", "max_concurrency"):
        assert verb[name] == getattr(defaults, name), name
    assert verb["no_batching"] is not defaults.batching
    with mock.patch.object(command, "cmd_serve", lambda args: vars(args)):
        module = command.main(["--bundle", "b"])
    assert {k: module[k] for k in verb if k not in ("verb", "bundle")} == {
        k: v for k, v in verb.items() if k not in ("verb", "bundle")
    }
    bench = inspect.signature(serve_bench.serve_bench).parameters
    for name in ("workers", "batch", "batch_wait_ms"):
        assert bench[name].default == getattr(defaults, name), name


def test_stock_backend_answers_through_the_same_layer():
    backend = StockBackend()
    with live(build_app(backend, Settings(workers=1))) as url:
        assert get(url, "/healthz")["batching"] is False
        code, body = post(url, png(64, height=24))
        assert code == 200, body
        assert body["status"] == "ok" and body["confidence"] is None
        assert isinstance(body["text"], str) and body["model"] == "stock"
        assert post(url, b"junk")[1]["code"] == "E_DECODE"
        assert post(url, b"")[1]["code"] == "E_EMPTY"
    assert backend.batchable is False
    with pytest.raises(ServeError, match=r"StockBackend does not batch.*check `batchable`"):
        backend.prepare(png(64, height=24))
    with pytest.raises(ServeError, match="does not batch"):
        backend.run_batch([])


# ---------------------------------------------------------------------------- the client side


def test_unsure_client_gets_the_server_text(confident, unsure):
    server_rec = Recognizer.from_bundle(confident)
    images = noise_images(5)
    with live(build_app(BundleBackend(server_rec))) as url:
        client = Recognizer.from_bundle(unsure, escalation_url=url + RECOGNIZE_PATH)
        for data in images:
            result = client.predict(data)
            assert result.status == "server", result.events
            assert result.model == "server"
            assert result.text == server_rec.predict(data).text
            assert result.timings_ms["server"] > 0


def test_the_server_never_escalates_itself(confident, monkeypatch):
    from ocr_bundles_runtime import recognizer

    def never(*args: Any) -> Any:
        raise AssertionError("the server escalated")

    monkeypatch.setattr(recognizer, "ask_server", never)
    rec = Recognizer.from_bundle(confident, escalation_url="http://127.0.0.1:9/v1/recognize")
    backend = BundleBackend(rec)
    assert rec.escalation_url is None
    with live(build_app(backend)) as url:
        assert post(url, png(48))[0] == 200


def test_unsure_image_from_the_server_keeps_the_local_guess(plain, unsure):
    """A server that is unsure too answers "low_confidence": the client keeps its own text."""
    with live(build_app(BundleBackend(Recognizer.from_bundle(unsure)))) as url:
        client = Recognizer.from_bundle(unsure, escalation_url=url + RECOGNIZE_PATH)
        assert post(url, png(48))[1]["status"] == "low_confidence"
        result = client.predict(png(48))
    assert result.status == "needs_server" and result.model == "primary"


def test_verb_serves_and_a_killed_server_is_unreachable(confident, unsure):
    with serve_process(confident) as (proc, url):
        health = get(url, "/healthz")
        assert health["target"] == "tiny" and health["batching"] is False
        client = Recognizer.from_bundle(
            unsure, escalation_url=url + RECOGNIZE_PATH, escalation_timeout_s=1.0
        )
        assert client.predict(png(48)).status == "server"
        proc.kill()
        proc.wait(10)
        t0 = time.perf_counter()
        result = client.predict(png(48))
        elapsed = time.perf_counter() - t0
    assert result.status == "server_unreachable", result.events
    assert result.model == "primary"
    assert result.text == Recognizer.from_bundle(unsure).predict(png(48)).text
    assert elapsed < 1.0 + 1.0


def test_a_server_slower_than_the_client_timeout_is_unreachable(confident, unsure):
    backend = BundleBackend(Recognizer.from_bundle(confident))
    real = backend.recognize

    def sleepy(data: bytes) -> dict:
        time.sleep(1.5)
        return real(data)

    backend.recognize = sleepy  # type: ignore[method-assign]
    with live(build_app(backend)) as url:
        client = Recognizer.from_bundle(
            unsure, escalation_url=url + RECOGNIZE_PATH, escalation_timeout_s=0.5
        )
        t0 = time.perf_counter()
        result = client.predict(png(48))
        elapsed = time.perf_counter() - t0
    assert result.status == "server_unreachable", result.events
    assert result.model == "primary"
    assert 0.5 <= elapsed < 0.5 + 1.0


# ---------------------------------------------------------------------------- load


RSS_GROWTH_BOUND_MB = 10.0  # between the first and the last thousand requests


def test_load_eight_clients_zero_errors_bounded_memory(batchable):
    """8 client threads, 5000 requests against a `python -m stages serve` process: no error,
    and its resident memory grows by less than RSS_GROWTH_BOUND_MB after the first 1000."""
    images = noise_images(12)
    total, threads = 5000, 8
    done = 0
    lock = threading.Lock()
    rss: dict[str, int] = {}
    errors: list[Any] = []
    t_start = time.perf_counter()
    with serve_process(batchable, "--batch-wait-ms", "2") as (proc, url):

        def client(k: int) -> None:
            nonlocal done
            for i in range(k, total, threads):
                code, body = post(url, images[i % len(images)])
                if code != 200:
                    errors.append(body)
                with lock:
                    done += 1
                    if done == 1000:
                        rss["first"] = vm_rss_kb(proc.pid)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(client, range(threads)))
        rss["last"] = vm_rss_kb(proc.pid)
        metrics = get(url, "/metrics")
    elapsed = time.perf_counter() - t_start
    assert errors == []
    assert metrics["requests"] == total and metrics["errors"] == {}
    assert metrics["in_flight"] == 0
    growth_mb = (rss["last"] - rss["first"]) / 1024
    assert growth_mb < RSS_GROWTH_BOUND_MB, rss
    assert elapsed < 60, f"{elapsed:.1f}s"
    print(f"load: {total} requests in {elapsed:.1f}s, rss kB {rss}, {metrics}")
