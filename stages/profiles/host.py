"""What this machine is, as CPU profiles see it. Standard library only."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# the flags that decide which int8 kernels onnxruntime runs (and how fast)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@functools.cache
def host_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, ARM `Features`); empty where
    there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def host_isa() -> list[str]:
    """This CPU's int8-relevant flags, in ISA_FLAGS order."""
    flags = host_flags()
    return [f for f in ISA_FLAGS if f in flags]


def host_cpu() -> str:
    """The CPU's model name, or the platform's word for it."""
    fallback = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fallback
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return fallback


def host_facts() -> dict[str, str | list[str]]:
    """The CPU and its int8 flags: what a record names as the machine that computed it."""
    return {"cpu": host_cpu(), "isa": host_isa()}


def host_arch() -> str:
    """x86_64 or aarch64 (platform.machine's spelling; arm64 on macOS is aarch64 here)."""
    arch = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
