"""Store weights and compute in float16, keeping float32 model inputs and outputs.

Before: float32 initializers (ddddocr's model: 54.1 MB).
After:  float16 initializers and activations, with a Cast after the input and before the
        output when `keep_io_types` (ddddocr's model: 27.1 MB, 2 Casts).
Lossy: float16 keeps ~3 significant digits. Measured on ddddocr's model (3 random inputs,
       widths 100-300): max abs logit error 0.016 at logit magnitude ~27, argmax agreement 100%.

Uses onnxruntime's own converter (onnxruntime.transformers.float16, shipped with onnxruntime).
It appends the input Casts after the nodes that consume them; the nodes are re-sorted here
because onnx.checker and other tools (unlike onnxruntime) require topological order.

Measured with onnxruntime 1.32 CPUExecutionProvider on x86-64 (AMD EPYC, AVX2, no AVX-512
FP16): only data-movement ops (Transpose, Reshape, Squeeze, Unsqueeze, Concat, Gather) have
float16 kernels; Conv, Sigmoid, Mul, Add, MatMul, Gemm, LSTM and QuickGelu do not. Sessions do
not fail on them: onnxruntime inserts Casts to float32 around each such node at load time. So
no op of these models has to be blocked for the CPU provider to run them, and blocking LSTM
would only keep its weights float32 (35.5 MB instead of 27.1 MB) at no accuracy gain
(max abs error 0.0112 vs 0.0107).
CPU latency of ddddocr's model (1 thread, width 160, median of 200 interleaved runs, the
quietest of 3 rounds on a shared 2-core box; the ratios held in every round):
session level "basic" 9.9 -> 13.3 ms and "extended" 9.6 -> 12.8 ms (+35%: the weights are cast
to float32 on every run); level "all" 8.9 -> 9.0 ms (unchanged: the weight casts are folded at
load, so the session computes in float32). On x86 the float16 model is a download-size
win, not a speed win; speed needs a provider with float16 kernels (not measured here).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from pydantic import BaseModel, ConfigDict, Field

from ocr_bundles_runtime.session import quiet_cpu_session

from .. import modelio
from ..errors import PassError
from ..registry import PassContext, register


class ToFp16Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_io_types: bool = Field(
        True,
        description="keep float32 model inputs and outputs (Casts inside the model); false "
        "makes callers feed and read float16",
    )
    op_block_list: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OP_BLOCK_LIST),
        description="op types left in float32. Default: onnxruntime's converter list (ML, "
        "TopK, Range, CumSum, Min, Max, Upsample, NonMaxSuppression, ...). Measured on x86 "
        "with onnxruntime 1.32: the CPU provider runs every op of these models (Conv, LSTM, "
        "Gemm, ...) from a float16 model by casting to float32 at load, so none more is needed; "
        "block an op here to keep its weights float32 for accuracy",
    )
    node_block_list: list[str] = Field(
        default_factory=list, description="node names left in float32 (e.g. the output head)"
    )


@register("to_fp16", ToFp16Options, kind="convert", exact=False)
def to_fp16(
    model: onnx.ModelProto, options: ToFp16Options, context: PassContext
) -> onnx.ModelProto:
    """Convert float32 weights and compute to float16 with onnxruntime's converter."""
    if not _weights_of_type(model, TensorProto.FLOAT):
        raise PassError("to_fp16", "the model has no float32 weights (already float16?)")
    nodes = {n.name for n in model.graph.node}
    unknown = sorted(set(options.node_block_list) - nodes)
    if unknown:
        raise PassError("to_fp16", f"node_block_list names {unknown} that are not in the model")
    work = modelio.copy(model)  # the converter rewrites the graph it is given in place
    out = convert_float_to_float16(
        work,
        keep_io_types=options.keep_io_types,
        op_block_list=list(options.op_block_list),
        node_block_list=list(options.node_block_list),
    )
    if not _weights_of_type(out, TensorProto.FLOAT16):
        raise PassError(
            "to_fp16",
            "no weight was converted: op_block_list/node_block_list block every node that has "
            "float32 weights; shorten them",
        )
    # the converter appends its Casts at the end of the node list; onnxruntime sorts on load,
    # but the ONNX spec (and onnx.checker) require topological order
    try:
        OnnxModel.graph_topological_sort(out.graph)
    except RuntimeError as e:
        raise PassError(
            "to_fp16",
            f"the converted graph cannot be sorted topologically ({e}); "
            "keep the node it names in float32 with node_block_list",
        ) from e
    modelio.copy_metadata(out, model)
    _check_runs(out, model, context)
    return out


def _weights_of_type(model: onnx.ModelProto, dtype: int) -> int:
    """Initializers and Constant-node tensors of `dtype` in the main graph."""
    count = sum(t.data_type == dtype for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            count += sum(
                a.type == onnx.AttributeProto.TENSOR and a.t.data_type == dtype
                for a in node.attribute
            )
    return count


def _check_runs(out: onnx.ModelProto, model: onnx.ModelProto, context: PassContext) -> None:
    """The converted model must pass the checker, load on the CPU provider and run one image."""
    try:
        onnx.checker.check_model(modelio.checkable(out))
        _run_first(out, context)
    except Exception as e:
        try:
            _run_first(model, context)
        except Exception as original:
            # an image the float32 model rejects says nothing about the conversion
            raise PassError(
                "to_fp16", f"the input model fails on the first calibration image ({original})"
            ) from original
        raise PassError(
            "to_fp16",
            f"the float16 model does not check, load or run on CPUExecutionProvider "
            f"({type(e).__name__}: {e}); add the failing op type to op_block_list",
        ) from e


def _run_first(model: onnx.ModelProto, context: PassContext) -> None:
    session = quiet_cpu_session(model.SerializeToString())
    feed = session.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    for x in context.calibration[:1]:
        session.run(None, {feed.name: np.asarray(x, dtype=dtype)})
