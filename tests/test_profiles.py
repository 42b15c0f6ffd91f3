"""CPU profiles: where this machine runs one, and the worker process that runs a model there."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tiny

from ocr_bundles_runtime.session import Runtime, session_plan
from stages.errors import ProfileError
from stages.profiles import profile as profiles
from stages.profiles.host import host_arch, host_flags
from stages.profiles.profile import CpuProfile, Placement, place
from stages.profiles.run import run_on

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
    (tmp_path / "arm64" / "sysroot" / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "arm64" / "sysroot" / "usr" / "bin" / "python3.11").write_text("")
    (tmp_path / "arm64" / "site").mkdir()
    got = place(arm, emu=tmp_path)
    assert got.how == "emulated"
    assert got.command[:3] == ("/usr/bin/qemu-aarch64", "-cpu", "cortex-a53")
    assert dict(got.env)["PYTHONPATH"] == str(tmp_path / "arm64" / "site")


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
    with pytest.raises(ProfileError, match=r"the worker .* exited with 1"):
        run_on(native, broken, session_plan(Runtime()), tiny.inputs(1), "test")


# ---------------------------------------------------------------------------- emulated CPUs
# These run wherever `make emulators` has installed QEMU and the arm64 Python (make test does).


def shipped_profiles() -> dict[str, CpuProfile]:
    from stages.params import load_params

    return load_params(Path(__file__).resolve().parents[1] / "params.yaml").profiles


def emulated(name: str) -> Placement:
    got = place(shipped_profiles()[name])
    if got.how == "unavailable":
        pytest.skip(f"{name}: {got.reason}")
    return got


@pytest.mark.parametrize("name", ["arm64", "x86-avx2"])
def test_float_outputs_agree_with_this_machine_on_each_architecture(tmp_path, name):
    """A float model reads the same on any CPU to float rounding: the check that the
    emulator (and the arm64 wheel) runs models faithfully. (Each emulated start costs ~10 s:
    one profile per architecture.)"""
    model, xs = tiny.tiny_ctc(), tiny.inputs(3)
    got = run_on(emulated(name), saved(tmp_path, model), session_plan(Runtime()), xs, name)
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, tiny.run(model, x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_int8():
    """The tiny CTC model as quantize_to_tolerance leaves it: QDQ Conv (per channel),
    DynamicQuantizeLSTM, MatMulInteger head; the outputs its decisions are made from."""
    from stages.passes.quantize_to_tolerance import (
        QuantizeToToleranceOptions,
        quantize_to_tolerance,
    )
    from stages.registry import PassContext

    model = tiny.tiny_ctc()
    xs = tiny.inputs(4)
    context = PassContext(calibration=xs, validation={"clean": [(x, "a") for x in xs]})
    options = QuantizeToToleranceOptions(max_accuracy_drop_pts=100, min_agreement=0.0)
    return quantize_to_tolerance(model, options, context)


@pytest.mark.parametrize("name", ["arm64", "arm64-dotprod", "arm64-i8mm", "x86-avx2"])
def test_an_int8_model_reads_the_same_on_every_shipped_profile(tmp_path, name, tiny_int8):
    """With int8_kernels exact (from .onnx: onnxruntime's AVX2 weight rewrite runs at load)
    the profiles' integer kernels agree on this model to float rounding; the saturating AVX2
    kernels miss by ~2e-1. The real models' verify stage measures the same on real data."""
    xs = tiny.inputs(3, seed=5)
    path = saved(tmp_path, tiny_int8)
    got = run_on(emulated(name), path, session_plan(Runtime()), xs, name)
    for x, y in zip(xs, got, strict=True):
        want = tiny.run(tiny_int8, x)
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(y.argmax(-1), want.argmax(-1))


def test_the_avx2_profile_saturates_with_fast_kernels_wherever_the_tests_run(tmp_path):
    """Emulated Haswell has AVX2 and no VNNI, so even on a VNNI machine this shows the kernel
    difference the x86-avx2 profile stands for, and that `exact` removes it."""
    from test_int8_kernels import integer_reference, saturating_matmul

    a = np.full((1, 64), 255, np.uint8)
    path = saved(tmp_path, saturating_matmul())
    fast = session_plan(Runtime(int8_kernels="fast"))
    (got,) = run_on(emulated("x86-avx2"), path, fast, [a], "x86-avx2")
    assert not np.array_equal(got, integer_reference(a))
