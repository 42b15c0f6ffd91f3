"""Empirical bias correction of a QDQ model (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2,
measured on data instead of derived from batch-norm statistics).

int8 weights and clipped, rounded activations shift the mean of a convolution's output per
channel; the next layers read that shift as signal. Each quantized node whose bias is an int32
DequantizeLinear gets, in graph order, the difference between the float model's mean output per
channel and the quantized model's (with the corrections before it applied) added to its bias,
over the same images. Its outputs' spread is untouched: only the mean moves.

The means come from float runs on the build machine, so the shift is rounded to SHIFT_BITS
mantissa bits before it becomes int32 steps: a CPU's float rounding (1e-6 relative) then almost
never changes a stored bias, and an AVX2 and an AVX-512 build write the same file.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from ocr_bundles_runtime.session import quiet_cpu_session

from .. import modelio

SHIFT_BITS = 4  # 1/16 relative steps: coarse next to float noise, fine next to the shift itself


def correct_biases(
    quantized: onnx.ModelProto, float_model: onnx.ModelProto, samples: list[np.ndarray]
) -> onnx.ModelProto:
    """`quantized` with every int32 bias corrected on `samples`."""
    targets = _int32_biases(quantized)
    if not targets:
        return quantized
    out = modelio.copy(quantized)
    want = _channel_means(float_model, [t.output for t in targets], samples)
    inits = {i.name: i for i in out.graph.initializer}
    for t, target in zip(targets, want, strict=True):
        got = _channel_means(out, [t.output], samples)[0]
        scale = numpy_helper.to_array(inits[t.scale]).astype(np.float64)
        shift = _snap(target.astype(np.float64) - got.astype(np.float64))
        bias = inits[t.bias]
        steps = numpy_helper.to_array(bias).astype(np.int64) + np.round(shift / scale)
        limits = np.iinfo(np.int32)
        bias.CopyFrom(
            numpy_helper.from_array(np.clip(steps, limits.min, limits.max).astype(np.int32), t.bias)
        )
    return out


class _Target(NamedTuple):
    """A quantized node's output and its int32 bias initializer with that bias's scale."""

    output: str
    bias: str
    scale: str


def _int32_biases(model: onnx.ModelProto) -> list[_Target]:
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq = producers.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT32 or dq.input[1] not in inits:
            continue
        found.append(_Target(node.output[0], dq.input[0], dq.input[1]))
    return found


def _channel_means(
    model: onnx.ModelProto, outputs: list[str], samples: list[np.ndarray]
) -> list[np.ndarray]:
    """Mean of each named tensor per channel (axis 1) over every sample and position."""
    probe = modelio.exposing(model, outputs)
    # the project's probe session: exact int8 kernels, so an AVX2 machine's fused convolutions
    # compute what a VNNI machine's do
    session = quiet_cpu_session(probe.SerializeToString(), threads=2)
    feed = session.get_inputs()[0].name
    sums: list[np.ndarray | float] = [0.0] * len(outputs)
    count = [0] * len(outputs)
    for x in samples:
        for i, y in enumerate(session.run(outputs, {feed: x})):
            axes = tuple(a for a in range(y.ndim) if a != 1)
            sums[i] = sums[i] + y.astype(np.float64).sum(axis=axes)
            count[i] += y.size // y.shape[1]
    return [np.asarray(s) / c for s, c in zip(sums, count, strict=True)]


def _snap(values: np.ndarray) -> np.ndarray:
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2.0**SHIFT_BITS) / 2.0**SHIFT_BITS, exponent)
