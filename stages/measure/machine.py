"""Which machine measured, and which of its cores a measurement may use. Standard library only:
the server bench and the report use it without loading a model.

`python -m stages.measure.machine --out machine.json` (make build runs it before dvc repro)
writes these facts where the measuring stages depend on them: timings belong to a machine, so
DVC remeasures on another CPU, core count or library version and reuses the committed figures
only where the facts are equal. Stages whose numbers (not times) come from this machine's
kernels (build, evaluate, baselines, bundle, verify, levers) depend on `numerics` alone: what
decides the integers an int8 model computes here. Every x86-64 CPU is one kind there, since
every session runs onnxruntime's exact int8 kernels (runtime.int8_kernels), so a build on an
AVX2 machine keeps the texts and scores a VNNI machine computed, and remeasures only timings."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..profiles.host import host_arch, host_facts, host_flags

ROOT = Path(__file__).resolve().parents[2]  # child processes run `-m stages...` from here


def pinned_cores(threads: int, available: Sequence[int] | None = None) -> list[int]:
    """The first `threads` CPUs this process may use (all of them if there are fewer)."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    return cpus[: max(1, threads)]


# ARM flags whose int8 kernels compute other integers (asimddp/i8mm gave the same bits on the
# inputs compared, KleidiAI's SME kernels did not): they stay apart until shown equal
ARM_INT8_FLAGS = ("asimddp", "i8mm", "sme")


def numerics(arch: str | None = None, flags: frozenset[str] | None = None) -> dict[str, Any]:
    """What decides the numbers an int8 model computes on this machine: its architecture and,
    on ARM, the int8 extensions. x86-64 has none here: the exact kernels give AVX2 (U8U8) the
    integers VNNI computes (tests/test_int8_kernels.py, and the whole suite on emulated
    Haswell: tests/test_int8_on_both_x86.py)."""
    arch = host_arch() if arch is None else arch
    flags = host_flags() if flags is None else flags
    int8 = [f for f in ARM_INT8_FLAGS if f in flags] if arch == "aarch64" else []
    return {"arch": arch, "int8": int8}


def machine_info() -> dict[str, Any]:
    """The CPU (with the ISA flags that decide int8 speed), cores and library versions: ratios
    differ between machines, so every figure says which one measured it."""
    return {
        **host_facts(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": metadata.version("onnxruntime"),
        "ddddocr": metadata.version("ddddocr"),
        "numerics": numerics(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.measure.machine", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="machine.json to write")
    out = parser.parse_args(argv).out
    info = machine_info()
    old = json.loads(out.read_text()) if out.is_file() else None
    if info != old:  # equal facts stay untouched, so the file's time says when they changed
        write_json(out, info)
    state = "unchanged" if info == old else "written: the measuring stages will rerun"
    print(f"machine: {info['cpu']}, {info['usable_cores']} usable cores -> {out} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
