"""The last step of the fallback chain: ask a recognition server (`python -m stages serve`).

Standard library only (urllib), so the runtime's dependencies stay onnxruntime, numpy and
Pillow. No call is ever made unless the app or the manifest names a URL.

The whole exchange (connect, send, headers, body) gets one deadline of `timeout_s` seconds:
a server that trickles its answer byte by byte is cut off like one that never answers. Nothing
the server does raises out of `ask_server`; every failure is a ServerAnswer with a reason.
"""

from __future__ import annotations

import json
import math
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
    import http.client
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    try:
        request = urllib.request.Request(
            url,
            data=image,
            method="POST",
            headers={"Content-Type": "application/octet-stream", "User-Agent": USER_AGENT},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = _read_until(response, deadline)
        body = json.loads(raw)
    except urllib.error.HTTPError as e:
        reachable = e.code < 500  # 4xx: the server works and refused this image
        return ServerAnswer(False, reachable, _error_body(e), f"HTTP {e.code}")
    except urllib.error.URLError as e:  # refused, DNS, TLS, connect timeout
        return ServerAnswer(False, False, {}, f"URLError: {e.reason}")
    except (TimeoutError, _Deadline):
        return ServerAnswer(False, False, {}, f"no answer within {timeout_s:g} s")
    except (OSError, http.client.HTTPException) as e:  # reset, garbled status line, cut body
        return ServerAnswer(False, False, {}, f"{type(e).__name__}: {e}")
    except _TooLarge:
        return ServerAnswer(False, False, {}, f"answer over {MAX_ANSWER_BYTES} bytes")
    except (ValueError, RecursionError) as e:  # not JSON (or a bad URL that slipped through)
        return ServerAnswer(False, False, {}, f"unreadable answer: {type(e).__name__}")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return ServerAnswer(False, False, {}, "answer without a text field")
    status = body.get("status")
    return ServerAnswer(status == "ok", True, body, f"server status {status}")


class _Deadline(Exception):
    pass


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
