"""Dynamic int8 quantization with onnxruntime: int8 weights, activations quantized per run.

Before: LSTM(W, R, B) and Gemm(x, W, b) (or MatMul + Add) in float32.
After:  DynamicQuantizeLSTM with int8 W/R; Gemm rewritten by onnxruntime to MatMul + Add, the
        MatMul becoming DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (onnxruntime fuses
        that chain into DynamicQuantizeMatMul/MatMulIntegerToFloat when the session loads).
        Conv only when op_types asks for it (ConvInteger). No calibration data is needed.
Exact: no; logits move by quantization noise (ddddocr's model: 54 -> 16 MB, ~99 % of frames
       keep their argmax class).
Tested behaviour: an already-quantized input (QuantizeLinear, DequantizeLinear, MatMulInteger,
ConvInteger, QLinear*, ... nodes, e.g. ddddocr's common_old.onnx) raises PassError, as does an
op_types selection that matches no node or that onnxruntime leaves entirely in float (GRU).
"""

from __future__ import annotations

from typing import Any, Literal

import onnx
import onnxruntime.quantization as ort_quant
from pydantic import BaseModel, ConfigDict, Field

from ..errors import PassError
from ..registry import PassContext, register
from . import _ort_quant as q

NAME = "quantize_dynamic"
DynamicOp = Literal["MatMul", "Gemm", "LSTM", "GRU", "Attention", "Conv"]


class QuantizeDynamicOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op_types: list[DynamicOp] = Field(
        default_factory=lambda: ["MatMul", "Gemm", "LSTM"],
        min_length=1,
        description=(
            "op types to quantize. Conv is left out by default: it becomes ConvInteger, which "
            "onnxruntime's CPU provider runs unfused (ddddocr's model: 2.2x slower than float "
            "Conv, 1 thread) and other providers may not implement at all. GRU has no int8 "
            "kernel in onnxruntime and stays float; Attention means the com.microsoft op"
        ),
    )
    weight_type: Literal["int8", "uint8"] = Field(
        "int8", description="weight data type; int8 (symmetric) is what CPU kernels prefer"
    )
    per_channel: bool = Field(
        False, description="one scale per output channel instead of per tensor (more accurate)"
    )
    reduce_range: bool = Field(
        False,
        description=(
            "quantize weights to 7 bits; set true on x86 CPUs without VNNI (AVX2 only) if U8S8 "
            "saturation in the int8 multiply-add hurts accuracy"
        ),
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="node names to keep in float"
    )
    nodes_to_quantize: list[str] | None = Field(
        None, description="only these node names (still filtered by op_types); null = all"
    )


@register(NAME, QuantizeDynamicOptions, kind="quantize", exact=False)
def quantize_dynamic(
    model: onnx.ModelProto, options: QuantizeDynamicOptions, context: PassContext
) -> onnx.ModelProto:
    """Quantize the weights of `op_types` nodes to 8 bits; activations at run time."""
    q.reject_quantized(NAME, model)
    q.require_initializer_weights(NAME, model)
    work = q.working_copy(model)
    q.check_node_names(NAME, work, "nodes_to_exclude", options.nodes_to_exclude)
    q.check_node_names(NAME, work, "nodes_to_quantize", options.nodes_to_quantize or [])
    ops = list(options.op_types)
    if not q.select(work, ops, options.nodes_to_exclude, options.nodes_to_quantize):
        raise PassError(NAME, q.no_match_message(work, ops))
    args = ort_arguments(work, options)
    out = q.run_quantizer(
        NAME,
        work,
        lambda src, dst: ort_quant.quantize_dynamic(src, dst, **args),
        fix="change op_types or exclude the failing node with nodes_to_exclude",
    )
    if not q.quantized_ops(out):
        raise PassError(
            NAME,
            f"onnxruntime left every node selected by op_types {ops} in float (GRU has no int8 "
            "kernel; Gemm is only quantized with transA=0, alpha=beta=1; weights must be "
            "initializers); choose other op_types",
        )
    sample = context.calibration[0] if context.calibration else None
    cause = f"per_channel={options.per_channel}, op_types {ops}"
    advice = "set per_channel: false" if options.per_channel else "remove the op type from op_types"
    return q.check_and_finish(NAME, out, model, context, sample, (cause, advice))


def ort_arguments(model: onnx.ModelProto, options: QuantizeDynamicOptions) -> dict[str, Any]:
    """The one place the typed options become onnxruntime's quantize_dynamic arguments.

    In dynamic mode onnxruntime rewrites every Gemm into MatMul '<gemm name>_MatMul' + Add and
    then quantizes it as a MatMul, so Gemm and MatMul are told apart here by node name."""
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]

    def renamed(name: str) -> str:
        return f"{name}_MatMul" if name in gemms else name

    exclude = [renamed(n) for n in options.nodes_to_exclude]
    if "Gemm" not in options.op_types:
        exclude += [renamed(n) for n in gemms]
    if "MatMul" not in options.op_types:
        exclude += matmuls
    only = options.nodes_to_quantize
    op_types = sorted({"MatMul" if t == "Gemm" else t for t in options.op_types})
    return {
        "op_types_to_quantize": op_types,
        "per_channel": options.per_channel,
        "reduce_range": options.reduce_range,
        "weight_type": q.QUANT_TYPES[options.weight_type],
        # onnxruntime reads [] as "every node"; an explicit [] never gets here (no match above)
        "nodes_to_quantize": None if only is None else [renamed(n) for n in only],
        "nodes_to_exclude": exclude,
        # activation x activation MatMuls would need both sides quantized per run: keep float
        "extra_options": {"MatMulConstBOnly": True},
    }
