"""The int8 closeness tests on the other x86 kind as well.

Their tolerances were measured on a VNNI machine, and on an AVX2 machine without VNNI fifteen of
them once failed: onnxruntime's U8S8 kernel saturates there. So on a VNNI machine (which QEMU
cannot emulate) this runs those test files again under QEMU's Haswell model, whose AVX2 kernel
path saturates as the real one does (checked first, so a run on the VNNI path cannot pass for
it); on an AVX2-only machine the suite itself ran them on that path. The tests on the real
54 MB model are left out (minutes each under emulation); every tiny-model test of these files
runs: the int8 passes' closeness tests (the fine-tune's included), and the bundle,
conformance and runtime tests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_profiles import emulated

ROOT = Path(__file__).resolve().parents[1]
INT8_TESTS = [
    "tests/passes/test_quantize_static.py",
    "tests/passes/test_quantize_dynamic.py",
    "tests/passes/test_quantize_to_tolerance.py",
    "tests/passes/test_scale_search.py",
    # the fine-tune's float64 training on torch's AVX2 kernels (39 s under QEMU)
    "tests/passes/test_qat.py",
    "tests/test_quant_split.py",
    "tests/test_int8_kernels.py",
    # the sessions an app gets: int8 bundles built, checked against their conformance vectors
    # and run through the runtime, where the exact kernels must reach every session (an .ort
    # cannot take them on AVX2). Under QEMU, tests that time themselves (test_soak) or compare
    # with a native process (test_js_client's node, which runs this host's VNNI) cannot hold.
    "tests/test_bundle.py",
    "tests/test_conformance.py",
    "tests/test_runtime.py",
]
SATURATES = """
import sys
import numpy as np
sys.path[:0] = ["tests", "."]
from test_int8_kernels import K, integer_reference, matmul
a = np.full((1, K), 255, np.uint8)
print("saturates" if not np.array_equal(matmul("fast", a), integer_reference(a)) else "exact")
"""


def test_the_int8_closeness_tests_pass_on_the_avx2_kernels(tmp_path: Path) -> None:
    placement = emulated("x86-avx2")
    if placement.how == "native":
        pytest.skip("this machine is AVX2 without VNNI: the suite ran these tests on its kernels")
    command = list(placement.command)
    probe = subprocess.run([*command, "-c", SATURATES], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert probe.stdout.strip() == "saturates", f"not the AVX2 kernel path: {probe}"
    run = subprocess.run(
        [*command, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--basetemp", str(tmp_path / "t"), "-k", "not real_", *INT8_TESTS],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, f"under {' '.join(command[:3])}:\n{tail}"
    assert " passed" in tail and "deselected" in tail, tail
