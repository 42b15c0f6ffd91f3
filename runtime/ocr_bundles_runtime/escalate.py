"""The last step of the fallback chain: ask a recognition server (`python -m stages serve`).

Standard library only (urllib), so the runtime's dependencies stay onnxruntime, numpy and
Pillow. No call is ever made unless the app or the manifest names a URL.

The whole exchange (connect, send, headers, body) gets one deadline of `timeout_s` seconds:
a watchdog shuts the connection's socket down when it passes, so a server that trickles its
headers or body byte by byte (each read then returns in time, none ends the exchange) is cut
off like one that never answers. Host names are resolved by the system resolver before the
connection exists, outside that deadline: give an IP address where DNS may hang. Nothing the
server does raises out of `ask_server`; every failure is a ServerAnswer with a reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "ocr-bundles-runtime"
MAX_ANSWER_BYTES = 1 << 20  # a recognition answer is a few hundred bytes; refuse floods
_CHUNK = 16 << 10


@dataclass(frozen=True)
class ServerAnswer:
    """What the server said, or why it said nothing usable."""

    ok: bool  # the server answered with status "ok": its text may replace the local one
    reachable: bool  # False: timeout, refused connection, 5xx or a garbled answer
    body: dict[str, Any]
    reason: str  # one line for the Result's events

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))

    @property
    def confidence(self) -> float:
        """The server's confidence in [0, 1]; 0.0 when it sent none or nonsense."""
        value = self.body.get("confidence")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0.0
        return float(value) if math.isfinite(value) and 0.0 <= value <= 1.0 else 0.0


def check_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"escalation url {url!r} is not an http:// or https:// URL with a host")
    return url


def ask_server(url: str, image: bytes, timeout_s: float) -> ServerAnswer:
    """POST the image bytes to `url` (the server's /v1/recognize) within `timeout_s` seconds."""
    # imported here: urllib pulls in http.client and ssl, megabytes an app without a server
    # URL should not pay for
    import urllib.request

    deadline = time.monotonic() + timeout_s
    late = ServerAnswer(False, False, {}, f"no answer within {timeout_s:g} s")
    watchdog = _Watchdog(timeout_s)
    try:
        request = urllib.request.Request(
            url,
            data=image,
            method="POST",
            headers={"Content-Type": "application/octet-stream", "User-Agent": USER_AGENT},
        )
        with _opener(watchdog).open(request, timeout=timeout_s) as response:
            raw = _read_until(response, deadline)
        body = json.loads(raw)
    except Exception as e:
        if watchdog.stop():  # whatever the cut-off socket raised, the cause is the deadline
            return late
        answer = _failure(e, late)
        if answer is None:
            raise  # not a server fault: a bug here must not pass for an unreachable server
        return answer
    if watchdog.stop():
        return late
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return ServerAnswer(False, False, {}, "answer without a text field")
    status = body.get("status")
    return ServerAnswer(status == "ok", True, body, f"server status {status}")


def _failure(e: Exception, late: ServerAnswer) -> ServerAnswer | None:
    """The ServerAnswer of an exchange that raised `e` before its deadline; None when `e` is
    none of the ways a server or network fails."""
    import http.client
    import urllib.error

    if isinstance(e, urllib.error.HTTPError):
        reachable = e.code < 500  # 4xx: the server works and refused this image
        return ServerAnswer(False, reachable, _error_body(e), f"HTTP {e.code}")
    if isinstance(e, urllib.error.URLError):  # refused, DNS, TLS, connect timeout
        return ServerAnswer(False, False, {}, f"URLError: {e.reason}")
    if isinstance(e, TimeoutError | _Deadline):
        return late
    if isinstance(e, OSError | http.client.HTTPException):  # reset, garbled, cut body
        return ServerAnswer(False, False, {}, f"{type(e).__name__}: {e}")
    if isinstance(e, _TooLarge):
        return ServerAnswer(False, False, {}, f"answer over {MAX_ANSWER_BYTES} bytes")
    if isinstance(e, ValueError | RecursionError):  # not JSON (or a bad URL that slipped by)
        return ServerAnswer(False, False, {}, f"unreadable answer: {type(e).__name__}")
    return None


class _Deadline(Exception):
    pass


class _Watchdog:
    """Shuts the connection's socket down `timeout_s` after it starts: a blocked read then
    returns at once, whatever the server trickles."""

    def __init__(self, timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self._fired:
                _shutdown(sock)

    def stop(self) -> bool:
        """Ends the watch; True when the deadline had passed (the answer is then void)."""
        self._timer.cancel()
        with self._lock:
            self._sock = None
            return self._fired

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the exchange: nothing left to cut
        sock.shutdown(socket.SHUT_RDWR)


def _opener(watchdog: _Watchdog) -> Any:
    """urllib's opener (proxies, redirects as usual) whose connections report their socket
    to `watchdog` as soon as they are connected."""
    import http.client
    import urllib.request

    def watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Watched(base):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                super().connect()
                watchdog.attach(self.sock)

        return Watched

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(
                watched(http.client.HTTPSConnection),
                req,
                context=self._context,  # type: ignore[attr-defined]
            )

    return urllib.request.build_opener(HTTP, HTTPS)


class _TooLarge(Exception):
    pass


def _read_until(response: Any, deadline: float) -> bytes:
    """The body, chunk by chunk, checking the deadline between chunks (each read is bounded
    by the socket timeout, so a slow trickle cannot stretch the call past it for long)."""
    parts: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise _Deadline
        chunk = response.read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _TooLarge
        parts.append(chunk)


def _error_body(e: Any) -> dict[str, Any]:
    try:
        body = json.loads(e.read(MAX_ANSWER_BYTES))
    except (ValueError, OSError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}
