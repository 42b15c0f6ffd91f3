"""Activation scales of a static QDQ model fine-tuned on calibration tensors by output error.

Learned step sizes (quantization-aware fine-tuning of scales) need gradients through the int8
graph and a training framework; this is their gradient-free stand-in. One sweep in graph order:
each activation QuantizeLinear's scale is multiplied by every factor of a grid, and the factor
that lowers the model's output error against a reference (the float model's outputs on the same
tensors) is kept, so later tensors are tuned to the noise of earlier ones, as training would.

A conv's int32 bias is quantized with its input's scale times its weight's: when that input's
scale moves, the bias is requantized with it (onnxruntime's fused kernels read the int32 bias
as is). Errors are rounded to 3 significant digits before they are compared, so the build CPU's
float rounding (1e-6 relative) cannot choose a different factor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ocr_bundles_runtime.session import Runtime

from .. import modelio
from ..records import ScaleSearchRecord
from ._ort_quant import rel_mse


def activation_scales(model: onnx.ModelProto) -> dict[str, str]:
    """Activation tensor -> its QuantizeLinear's scale initializer, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    return {
        n.input[0]: n.input[1]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def with_factors(model: onnx.ModelProto, factors: dict[str, float]) -> onnx.ModelProto:
    """`model` with each activation's scale multiplied by its factor and the int32 biases of
    the nodes reading it requantized to match."""
    out = modelio.copy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    scales = activation_scales(out)
    producer = {o: n for n in g.node for o in n.output}
    by_scale: dict[str, float] = {}
    for tensor, f in factors.items():
        by_scale[scales[tensor]] = f
    for name, f in by_scale.items():
        _scale(inits[name], f)
    for node in g.node:
        dqs = [producer.get(x) for x in node.input]
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(dqs) < 3 or dqs[0] is None:
            continue
        f = by_scale.get(dqs[0].input[1]) if dqs[0].op_type == "DequantizeLinear" else None
        bias = dqs[2]
        if f is None or bias is None or bias.op_type != "DequantizeLinear":
            continue
        _requantize_bias(inits[bias.input[0]], inits[bias.input[1]], f)
    return out


def _scale(t: onnx.TensorProto, f: float) -> None:
    t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * f).astype(np.float32), t.name))


def _requantize_bias(q: onnx.TensorProto, scale: onnx.TensorProto, f: float) -> None:
    values = numpy_helper.to_array(q).astype(np.float64) * numpy_helper.to_array(scale)
    _scale(scale, f)
    new = np.rint(values / numpy_helper.to_array(scale).astype(np.float64))
    info = np.iinfo(np.int32)
    q.CopyFrom(numpy_helper.from_array(np.clip(new, info.min, info.max).astype(np.int32), q.name))


def search(
    model: onnx.ModelProto,
    xs: list[np.ndarray],
    reference: list[np.ndarray],
    rt: Runtime,
    grid: list[float],
    progress: str = "",
) -> tuple[onnx.ModelProto, ScaleSearchRecord]:
    """One coordinate sweep over the activation scales; a factor is kept only when it lowers
    the (rounded) error, so the result never reads the tensors worse than `model`."""
    factors: dict[str, float] = {}
    before = best = rel_mse(model, xs, reference, rt)
    tensors = list(activation_scales(model))
    for i, tensor in enumerate(tensors, start=1):
        for f in grid:
            trial = {**factors, tensor: f}
            err = rel_mse(with_factors(model, trial), xs, reference, rt)
            if err < best:
                best, factors = err, trial
        if progress and (i % 8 == 0 or i == len(tensors)):
            print(f"{progress}: scales {i}/{len(tensors)}, rel_mse {before:.3g} -> {best:.3g}",
                  flush=True)  # fmt: skip
    return with_factors(model, factors), ScaleSearchRecord(
        factors=factors, rel_mse_before=before, rel_mse_after=best
    )
