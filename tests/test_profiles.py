"""CPU profiles: where this machine runs one, and the worker process that runs a model there."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tiny

from stages.errors import ProfileError
from stages.profiles import profile as profiles
from stages.profiles.host import host_arch, host_flags
from stages.profiles.profile import CpuProfile, Placement, place
from stages.profiles.run import run_on
from stages.runtime.session import Runtime, session_plan

OTHER_ARCH = "aarch64" if host_arch() == "x86_64" else "x86_64"


def test_a_profile_asking_nothing_of_this_architecture_runs_natively():
    here = place(CpuProfile(arch=host_arch(), note="any"))  # type: ignore[arg-type]
    assert here.how == "native" and here.command == (sys.executable,)


def test_a_flag_this_cpu_lacks_or_has_decides_against_native():
    missing = CpuProfile(arch=host_arch(), requires=["no_such_flag"], note="x")  # type: ignore[arg-type]
    assert not profiles.matches_host(missing)
    present = sorted(host_flags())[:1]
    if present:
        excluded = CpuProfile(arch=host_arch(), excludes=present, note="x")  # type: ignore[arg-type]
        assert not profiles.matches_host(excluded)


def test_no_qemu_model_means_unavailable_with_the_reason():
    far = CpuProfile(arch=OTHER_ARCH, qemu_cpu=None, note="x")  # type: ignore[arg-type]
    got = place(far)
    assert got.how == "unavailable" and "QEMU cannot emulate" in got.reason


def test_missing_emulator_says_to_run_make_emulators(monkeypatch, tmp_path):
    monkeypatch.setattr(profiles.shutil, "which", lambda *a, **k: None)
    far = CpuProfile(arch=OTHER_ARCH, qemu_cpu="cortex-a53", note="x")  # type: ignore[arg-type]
    got = place(far, emu=tmp_path)
    assert got.how == "unavailable" and "make emulators" in got.reason


def test_an_emulator_without_the_arm_python_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(profiles.shutil, "which", lambda name, **k: f"/usr/bin/{name}")
    arm = CpuProfile(arch="aarch64", qemu_cpu="cortex-a53", note="x")
    if host_arch() == "aarch64":
        pytest.skip("this machine is ARM: aarch64 profiles run natively")
    got = place(arm, emu=tmp_path)
    assert got.how == "unavailable" and "no aarch64 Python" in got.reason
    (tmp_path / "aarch64" / "sysroot" / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "aarch64" / "sysroot" / "usr" / "bin" / "python3.11").write_text("")
    (tmp_path / "aarch64" / "site").mkdir()
    got = place(arm, emu=tmp_path)
    assert got.how == "emulated"
    assert got.command[:3] == ("/usr/bin/qemu-aarch64", "-cpu", "cortex-a53")
    assert dict(got.env)["PYTHONPATH"] == str(tmp_path / "aarch64" / "site")


def saved(tmp_path: Path, model) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("kernels", ["exact", "fast"])
def test_the_worker_gives_the_in_process_outputs_bit_for_bit(tmp_path, kernels):
    """Its session comes from session_plan's data: the same settings, the same numbers."""
    from stages.passes.quantize_dynamic import QuantizeDynamicOptions, quantize_dynamic
    from stages.registry import PassContext

    model = tiny.tiny_ctc()
    int8 = quantize_dynamic(model, QuantizeDynamicOptions(), PassContext())
    rt = Runtime(int8_kernels=kernels)  # type: ignore[arg-type]
    xs = tiny.inputs(3)
    for m in (model, int8):
        native = place(CpuProfile(arch=host_arch(), note="here"))  # type: ignore[arg-type]
        got = run_on(native, saved(tmp_path, m), session_plan(rt), xs, "test")
        for x, y in zip(xs, got, strict=True):
            np.testing.assert_array_equal(y, tiny.run(m, x, rt))


def test_an_unavailable_profile_raises_with_its_reason(tmp_path):
    gone = Placement("unavailable", reason="needs a unicorn CPU")
    with pytest.raises(ProfileError, match="test: cannot run here: needs a unicorn CPU"):
        run_on(gone, saved(tmp_path, tiny.tiny_ctc()), session_plan(Runtime()), [], "test")


def test_a_failing_worker_raises_naming_the_command(tmp_path):
    native = place(CpuProfile(arch=host_arch(), note="here"))  # type: ignore[arg-type]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ProfileError, match="the worker .* exited with 1"):
        run_on(native, broken, session_plan(Runtime()), tiny.inputs(1), "test")
