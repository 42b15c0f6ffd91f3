"""Escalation: images still unsure after the fallback go to a recognition server, when (and
only when) a URL is set. The server here is a tiny http.server on 127.0.0.1 that answers as
it is told; every test stays well under a second of waiting."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_runtime import make_bundle, png

from ocr_bundles_runtime import Recognizer
from ocr_bundles_runtime import recognizer as recognizer_module

TIMEOUT_S = 0.3
SLACK_S = 1.0  # scheduling noise on a loaded 2-core machine; the server sleeps far longer


class Server:
    """What the fake server answers next, and what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b""
        self.delay_s = 0.0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()  # ends a delayed answer early at teardown
        self.url = ""

    def answer(self, http: int = 200, delay_s: float = 0.0, raw: bytes | None = None, **body):
        self.status, self.delay_s = http, delay_s
        self.body = raw if raw is not None else json.dumps(body).encode()


@pytest.fixture()
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers), data))
            if state.delay_s:
                state.release.wait(state.delay_s)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (timeout test)
                self.wfile.write(state.body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/recognize"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def unsure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every image stays unsure locally (threshold 1, no fallback): each one escalates."""
    return make_bundle(tmp_path_factory.mktemp("esc"), threshold=1.0, fallback="none")


@pytest.fixture(scope="module")
def local(unsure: Path) -> tuple[str, float]:
    """The local best guess for png(): (text, confidence)."""
    r = Recognizer.from_bundle(unsure).predict(png())
    return r.text, r.confidence


def recognizer(unsure: Path, url: str | None, timeout_s: float = TIMEOUT_S) -> Recognizer:
    return Recognizer.from_bundle(unsure, escalation_url=url, escalation_timeout_s=timeout_s)


def test_server_ok_replaces_the_local_text(unsure: Path, server: Server):
    server.answer(text="SERVER", confidence=0.97, status="ok", model="primary")
    image = png()
    r = recognizer(unsure, server.url).predict(image, return_probs=True)
    assert (r.status, r.text, r.model, r.confidence) == ("server", "SERVER", "server", 0.97)
    assert r.char_probs is None  # local probabilities would not describe the server's text
    assert r.events[-1] == "server: server status ok"
    assert r.timings_ms["server"] > 0
    [(path, headers, body)] = server.requests
    assert path == "/v1/recognize" and body == image  # the image file's own bytes
    assert headers["Content-Type"] == "application/octet-stream"


def test_an_array_is_sent_as_png(unsure: Path, server: Server):
    server.answer(text="A", confidence=0.9, status="ok")
    gray = np.full((16, 40, 1), 200, np.uint8)
    assert recognizer(unsure, server.url).predict(gray).text == "A"
    assert server.requests[0][2].startswith(b"\x89PNG")


def test_server_unsure_keeps_the_local_text(unsure: Path, server: Server, local: tuple[str, float]):
    server.answer(text="GUESS", confidence=0.2, status="low_confidence")
    r = recognizer(unsure, server.url).predict(png())
    assert (r.status, r.text, r.model) == ("needs_server", local[0], "primary")
    assert r.confidence == local[1]
    assert r.events[-1] == "server: server status low_confidence"


def test_a_refused_image_keeps_the_local_text(
    unsure: Path, server: Server, local: tuple[str, float]
):
    server.answer(400, code="E_DECODE", detail="bad", retryable=False)
    r = recognizer(unsure, server.url).predict(png())
    assert (r.status, r.text) == ("needs_server", local[0])
    assert r.events[-1] == "server: HTTP 400"


@pytest.mark.parametrize(
    ("status", "raw", "reason"),
    [
        (500, b'{"code": "E_INTERNAL"}', "HTTP 500"),
        (503, b'{"code": "E_BUSY"}', "HTTP 503"),
        (200, b"<html>proxy error</html>", "unreadable answer"),
        (200, b'{"status": "ok"}', "answer without a text field"),
        (200, b'["ok"]', "answer without a text field"),
    ],
)
def test_server_errors_are_unreachable(
    unsure: Path, server: Server, local: tuple[str, float], status: int, raw: bytes, reason: str
):
    server.answer(status, raw=raw)
    r = recognizer(unsure, server.url).predict(png())
    assert (r.status, r.text, r.model) == ("server_unreachable", local[0], "primary")
    assert r.confidence == local[1]
    assert r.events[-1].startswith(f"server: {reason}")


def test_a_refused_connection_is_unreachable(unsure: Path, local: tuple[str, float]):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = recognizer(unsure, f"http://127.0.0.1:{port}/v1/recognize").predict(png())
    assert time.monotonic() - t0 < TIMEOUT_S + SLACK_S
    assert (r.status, r.text) == ("server_unreachable", local[0])
    assert "refused" in r.events[-1].lower()


def test_a_slow_server_is_cut_off_at_the_timeout(
    unsure: Path, server: Server, local: tuple[str, float]
):
    server.answer(delay_s=10.0, text="LATE", confidence=1.0, status="ok")
    rec = recognizer(unsure, server.url)
    t0 = time.monotonic()
    r = rec.predict(png())
    elapsed = time.monotonic() - t0
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
    assert (r.status, r.text, r.model) == ("server_unreachable", local[0], "primary")
    assert r.events[-1] == f"server: no answer within {TIMEOUT_S:g} s"


def test_no_url_means_no_network_call(unsure: Path, monkeypatch: pytest.MonkeyPatch):
    def forbidden(*args: object, **kwargs: object) -> None:
        pytest.fail("the runtime called the network without an escalation URL")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", forbidden)
    monkeypatch.setattr(recognizer_module, "ask_server", forbidden)
    rec = Recognizer.from_bundle(unsure)
    assert rec.escalation_url is None
    r = rec.predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert not any(e.startswith("server") for e in r.events)


def test_sure_images_never_escalate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(recognizer_module, "ask_server", lambda *a: pytest.fail("escalated"))
    sure = make_bundle(tmp_path, threshold=0.0, fallback="none")
    r = Recognizer.from_bundle(sure, escalation_url="http://127.0.0.1:9/x").predict(png())
    assert r.status == "ok"


def test_the_manifest_url_is_used_and_the_app_overrides_it(tmp_path: Path, server: Server):
    server.answer(text="FROM_MANIFEST", confidence=0.9, status="ok")
    escalation = {"url": server.url, "timeout_s": 0.5}
    out = make_bundle(tmp_path, threshold=1.0, fallback="none", bundle={"escalation": escalation})
    rec = Recognizer.from_bundle(out)
    assert (rec.escalation_url, rec.escalation_timeout_s) == (server.url, 0.5)
    assert rec.predict(png()).text == "FROM_MANIFEST"
    assert recognizer(out, f"{server.url}?app=1").predict(png()).status == "server"
    assert server.requests[-1][0] == "/v1/recognize?app=1"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8080", "ftp://host/x", "file:///etc/hostname", "http://"]
)
def test_a_malformed_url_is_refused_at_load(unsure: Path, url: str):
    with pytest.raises(ValueError, match="not an http"):
        Recognizer.from_bundle(unsure, escalation_url=url)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), 601])
def test_a_bad_timeout_is_refused_at_load(unsure: Path, timeout: float):
    with pytest.raises(ValueError, match="timeout"):
        Recognizer.from_bundle(
            unsure, escalation_url="http://127.0.0.1:9/", escalation_timeout_s=timeout
        )


class Fault:
    """A loopback server that misbehaves below HTTP: reads the request, then does `mode`."""

    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/recognize"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(1 << 16)  # the request (headers and the small image)
                self.misbehave(conn)

    def misbehave(self, conn: socket.socket) -> None:
        if self.mode == "silent":  # accepts, reads, never answers
            self.stop.wait(10)
        elif self.mode == "garbled":
            conn.sendall(b"\x00\xffnot http at all\r\n\r\n")
            self.stop.wait(10)  # keeps the connection open: the client must not wait for it
        elif self.mode in ("trickle_headers", "trickle_body"):
            head = self.HEAD if self.mode == "trickle_body" else b""
            conn.sendall(head)
            for byte in (b'{"text": "LATE", "status": "ok"' + b" " * 400)[:400]:
                if self.stop.wait(0.1):
                    return
                conn.sendall(self.HEAD[:1] if not head else bytes([byte]))
        elif self.mode in ("reset", "reset_in_body"):
            if self.mode == "reset_in_body":
                conn.sendall(self.HEAD + b'{"text": "HALF')
            # linger 0: close sends RST instead of FIN, the client sees ECONNRESET
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") * 2)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    "mode", ["silent", "garbled", "trickle_headers", "trickle_body", "reset", "reset_in_body"]
)
def test_every_server_fault_ends_within_the_timeout(
    unsure: Path, local: tuple[str, float], mode: str
):
    """A real socket per fault: the whole exchange, not each read, is bounded by the timeout,
    and the app keeps its local best guess."""
    fault = Fault(mode)
    try:
        rec = recognizer(unsure, fault.url)
        t0 = time.monotonic()
        r = rec.predict(png())
        elapsed = time.monotonic() - t0
    finally:
        fault.close()
    assert elapsed < TIMEOUT_S + SLACK_S, f"{mode}: {elapsed:.2f} s"
    assert (r.status, r.text, r.model) == ("server_unreachable", local[0], "primary"), r.events
    assert r.confidence == local[1]
