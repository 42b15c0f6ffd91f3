"""The session's int8_kernels setting: exact integer arithmetic on every x86 kind.

onnxruntime's x86 U8S8 kernel without VNNI (AVX2) adds pairs of u8*s8 products in 16 bits
with saturation (vpmaddubsw); VNNI and ARM kernels accumulate in 32 bits. `exact` makes the
AVX2 path use U8U8 (session.x64quantprecision), so every x86 kind computes the same integers
as VNNI and ARM, and a build decides the same wherever it runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocr_bundles_runtime.session import Runtime, make_session
from stages.profiles.host import host_flags

K, N = 64, 8


def saturating_matmul() -> onnx.ModelProto:
    """MatMulInteger whose every pair of u8*s8 products overflows int16: 2*255*127 > 32767."""
    b = np.full((K, N), 127, np.int8)
    b[:, 1::2] = -128
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "sat",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, N])],
        [numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def matmul(kernels: str, a: np.ndarray) -> np.ndarray:
    model = saturating_matmul().SerializeToString()
    sess = make_session(model, Runtime(int8_kernels=kernels))  # type: ignore[arg-type]
    return sess.run(None, {"a": a})[0]


def integer_reference(a: np.ndarray) -> np.ndarray:
    b = numpy_helper.to_array(saturating_matmul().graph.initializer[0])
    return a.astype(np.int64) @ b.astype(np.int64)


def test_exact_kernels_compute_the_integer_product_on_any_cpu():
    a = np.full((1, K), 255, np.uint8)
    np.testing.assert_array_equal(matmul("exact", a), integer_reference(a))


def test_exact_kernels_match_on_random_inputs():
    a = np.random.default_rng(3).integers(0, 256, (1, K), dtype=np.uint8)
    np.testing.assert_array_equal(matmul("exact", a), integer_reference(a))


@pytest.mark.skipif(
    "avx2" not in host_flags() or {"avx512_vnni", "avx_vnni"} & host_flags(),
    reason="the U8S8 saturation exists only on x86 with AVX2 and without VNNI",
)
def test_fast_kernels_saturate_on_avx2_without_vnni():
    """Why `exact` is the default: here `fast` returns another number than the integers."""
    a = np.full((1, K), 255, np.uint8)
    got, want = matmul("fast", a), integer_reference(a)
    assert not np.array_equal(got, want)
    # each pair of products is clipped to 32767: the magnitude falls short of the true sum
    assert np.all(np.abs(got) < np.abs(want))
