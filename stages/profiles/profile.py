"""A CPU profile (params.yaml `profiles:`) and where this machine can run it.

A profile names an architecture, the CPU flags that tell it apart (present and absent) and the
QEMU CPU model that emulates it. This machine runs a profile natively when its architecture and
flags match, under QEMU user-mode emulation when the emulator set-up (`make emulators`) is
installed and the profile has a QEMU model, and not at all otherwise (the reason is recorded).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .host import host_arch, host_flags

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / ".emu"  # what `make emulators` installs (stages/profiles/emulators.sh)
Arch = Literal["x86_64", "aarch64"]
EMU_FOLDER = {"aarch64": "arm64", "x86_64": "amd64"}  # Debian's names, as emulators.sh uses
How = Literal["native", "emulated", "unavailable"]


class CpuProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch = Field(description="instruction set architecture")
    requires: list[str] = Field(
        default_factory=list,
        description="/proc/cpuinfo flags a CPU of this profile has (x86 'flags', ARM "
        "'Features'), e.g. avx2, asimddp, i8mm",
    )
    excludes: list[str] = Field(
        default_factory=list,
        description="flags it lacks: a CPU with one of them runs other int8 kernels",
    )
    qemu_cpu: str | None = Field(
        None,
        description="QEMU CPU model that emulates it (qemu-<arch> -cpu NAME); null: QEMU "
        "cannot (it emulates no AVX-512), so only a matching machine runs it",
    )
    note: str = Field(description="one line: what this profile's int8 kernels do differently")


@dataclass(frozen=True)
class Placement:
    """How this machine runs one profile: the interpreter command, its environment, or why
    it cannot."""

    how: How
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def matches_host(profile: CpuProfile) -> bool:
    flags = host_flags()
    return (
        profile.arch == host_arch()
        and set(profile.requires) <= flags
        and not set(profile.excludes) & flags
    )


def place(profile: CpuProfile, emu: Path = EMU) -> Placement:
    """Native where this machine is such a CPU, else emulated where set up, else why not."""
    if matches_host(profile):
        return Placement("native", (sys.executable,))
    if profile.qemu_cpu is None:
        return Placement(
            "unavailable",
            reason=f"needs an {profile.arch} CPU with {profile.requires} (QEMU cannot emulate "
            "it); run the verify stage on such a machine",
        )
    qemu = _qemu(profile.arch, emu)
    if qemu is None:
        return Placement(
            "unavailable",
            reason=f"no qemu-{profile.arch} found: run `make emulators` (stages/profiles/"
            "emulators.sh) to install the emulators",
        )
    if profile.arch == host_arch():  # another x86 CPU model: this venv's own interpreter
        return Placement("emulated", (qemu, "-cpu", profile.qemu_cpu, sys.executable))
    folder = emu / EMU_FOLDER[profile.arch]
    sysroot, site = folder / "sysroot", folder / "site"
    python = sysroot / "usr" / "bin" / "python3.11"
    if not python.is_file() or not site.is_dir():
        return Placement(
            "unavailable",
            reason=f"no {profile.arch} Python at {python}: run `make emulators`",
        )
    # -s: the host user's site-packages would hold x86 wheels
    command = (qemu, "-cpu", profile.qemu_cpu, "-L", str(sysroot), str(python), "-s")
    return Placement("emulated", command, (("PYTHONPATH", str(site)),))


def _qemu(arch: str, emu: Path) -> str | None:
    for name in (f"qemu-{arch}", f"qemu-{arch}-static"):
        found = shutil.which(name, path=f"{emu / 'bin'}:/usr/bin:/usr/local/bin")
        if found:
            return found
    return None
