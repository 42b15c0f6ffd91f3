"""The bench's worker processes: each run is one fresh, pinned `python -m stages.measure.worker`.

Rounds are interleaved (round r runs variant A, B, C, ... once each, then round r+1), so a slow
spell of this noisy machine hits every variant alike. Each round is one fresh process per
variant, so cold start and peak RSS are a real process's, not a warmed-up parent's. Long-session
runs measure memory, not time, so they run side by side on disjoint cores.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import modelio
from ..errors import PipelineError
from ..params import BenchParams
from ..progress import Progress
from .machine import ROOT
from .variants import Variant

STDERR_TAIL = 2000  # characters of a failed worker's stderr quoted in the error
TIMEOUT_S = 900.0  # per worker process


class BenchError(PipelineError):
    """A worker failed or timed out; the message names the variant and quotes its stderr."""


def worker_spec(
    variant: Variant, images: list[Path], params: BenchParams, cores: list[int], long: int
) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "kind": variant.kind,
        "cores": cores,
        "images": [str(p.resolve()) for p in images],
        "warm_images": params.warm_images,
        "warmup": params.warmup,
        "long_session": long,
        **variant.worker,
    }


def spawn(spec: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Run one worker; its result plus `cold_start_ms`, from spawn to its first text."""
    with tempfile.TemporaryFile(mode="w+b") as errf:
        t0 = time.perf_counter()
        with subprocess.Popen(
            [sys.executable, "-m", "stages.measure.worker", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errf,
            stdin=subprocess.DEVNULL,
        ) as proc:
            try:
                lines, first_at = _read_events(proc, t0 + timeout_s)
                rc = proc.wait(timeout=max(1.0, t0 + timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(
                    _failure(spec, f"timed out after {timeout_s:.0f}s", errf)
                ) from None
        if rc != 0 or first_at is None or len(lines) < 2:
            raise BenchError(_failure(spec, f"exit code {rc}", errf))
    result = json.loads(lines[-1])
    result["cold_start_ms"] = (first_at - t0) * 1e3
    result["first_text"] = json.loads(lines[0])["text"]
    return result


def _read_events(proc: subprocess.Popen[bytes], deadline: float) -> tuple[list[str], float | None]:
    """Read stdout to EOF with select, timestamping the arrival of the first full line."""
    assert proc.stdout is not None
    fd, buf, first_at = proc.stdout.fileno(), b"", None
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if first_at is None and b"\n" in chunk:
            first_at = time.perf_counter()
        if not chunk:
            return [ln for ln in buf.decode().splitlines() if ln.strip()], first_at
        buf += chunk


def _failure(spec: dict[str, Any], what: str, errf: Any) -> str:
    errf.seek(0)
    tail = errf.read().decode(errors="replace")[-STDERR_TAIL:]
    return f"bench worker for variant '{spec['variant']}' failed ({what}); stderr tail:\n{tail}"


def same_worker(variants: Sequence[Variant]) -> dict[str, str]:
    """variant -> the earlier variant whose worker it would repeat (same kind, same model bytes,
    same settings): a stage that changed nothing, or final beside the last stage, is timed once
    and reported with the first one's runs."""
    first: dict[str, str] = {}
    alias: dict[str, str] = {}
    for v in variants:
        spec = dict(v.worker)
        if "model" in spec:
            spec["model"] = modelio.sha256(spec["model"])
        key = json.dumps([v.kind, spec], sort_keys=True)
        if key in first:
            alias[v.name] = first[key]
        else:
            first[key] = v.name
    return alias


def measure(
    variants: list[Variant],
    images: list[Path],
    params: BenchParams,
    cores: list[int],
    label: str,
    alias: dict[str, str] | None = None,
    rounds: Callable[[dict[str, list[dict[str, Any]]], float], int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """All timing rounds, interleaved; each variant's worker results in round order. A variant
    in `alias` is not run: it gets the runs of the variant it repeats. `rounds`: given the
    first round's runs and its seconds, how many rounds to run in all (the bench's time
    budget, budget.py); without it, params.repeats."""
    alias = alias or {}
    live = [v for v in variants if v.skipped is None and v.name not in alias]
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in live}
    what = f"{label}: timing rounds ({len(live)} variants x {{}})"
    bar = Progress(what.format(params.repeats), len(live) * params.repeats)
    t0 = time.monotonic()
    _round(live, images, params, cores, runs, bar)
    repeats = rounds(runs, time.monotonic() - t0) if rounds and live else params.repeats
    bar.label, bar.total = what.format(repeats), len(live) * repeats
    for _ in range(repeats - 1):
        _round(live, images, params, cores, runs, bar)
    bar.close()
    return runs | {dup: runs[src] for dup, src in alias.items() if src in runs}


def _round(
    live: list[Variant],
    images: list[Path],
    params: BenchParams,
    cores: list[int],
    runs: dict[str, list[dict[str, Any]]],
    bar: Progress,
) -> None:
    """One interleaved round: every live variant's worker once, in order."""
    for v in live:
        runs[v.name].append(spawn(worker_spec(v, images, params, cores, 0)))
        bar.step()


def core_slots(threads: int, available: Sequence[int] | None = None) -> list[list[int]]:
    """Disjoint sets of `threads` CPUs: long-session runs measure memory, not time, so they
    may run side by side, one per slot."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    n = max(1, threads)
    slots = [cpus[i : i + n] for i in range(0, len(cpus) - n + 1, n)]
    return slots or [cpus]


def long_session_variants(variants: list[Variant], params: BenchParams) -> list[Variant]:
    """The variants that get a long session: deployable ones, or every one (scope `all`)."""
    every = params.long_session_scope == "all"
    return [v for v in variants if (every or v.long_session) and v.skipped is None]


def long_sessions(
    variants: list[Variant],
    images: list[Path],
    params: BenchParams,
    threads: int,
    label: str,
    calls: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One long-session run per variant in scope: resident memory after warm-up, halfway and
    after `calls` recognitions (default params.long_session) in the same process."""
    calls = params.long_session if calls is None else calls
    todo = long_session_variants(variants, params)
    if not calls or not todo:
        return {}
    slots = core_slots(threads)
    bar = Progress(
        f"{label}: long sessions ({calls} calls each, {len(slots)} at a time)", len(todo)
    )

    def one(i: int, v: Variant) -> tuple[str, dict[str, Any]]:
        spec = worker_spec(v, images, params, slots[i % len(slots)], calls)
        out = spawn(spec)
        bar.step()
        return v.name, out

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        done = dict(pool.map(one, range(len(todo)), todo))
    bar.close()
    return done
