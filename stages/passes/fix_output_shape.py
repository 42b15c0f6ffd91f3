"""Clear wrongly declared output dims so shape inference and runtimes stop trusting them.

Before: output '387' declared float[1, seqlen] (ddddocr's export), while the graph computes
        float[T, 1, 8210].
After:  output '387' declared float[T, 1, C] with symbolic T when `rank` is given, or with no
        shape at all (rank 0 = unknown); onnx shape inference then fills what it can prove.
Exact: only the declaration changes, never a node or a weight.
"""

from __future__ import annotations

import onnx
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..errors import PassError
from ..registry import PassContext, register


class FixOutputShapeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outputs: list[str] | None = Field(None, description="output names to fix; null = all outputs")
    rank: int = Field(
        3, ge=0, le=8, description="declare this many symbolic dims; 0 leaves the shape unknown"
    )
    infer_shapes: bool = Field(True, description="run onnx shape inference afterwards")


@register("fix_output_shape", FixOutputShapeOptions, kind="cleanup", exact=True)
def fix_output_shape(
    model: onnx.ModelProto, options: FixOutputShapeOptions, context: PassContext
) -> onnx.ModelProto:
    """Replace declared output shapes by `rank` symbolic dims (or none)."""
    out = modelio.copy(model)
    names = [o.name for o in out.graph.output]
    wanted = options.outputs if options.outputs is not None else names
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise PassError("fix_output_shape", f"outputs {missing} not in the model; it has {names}")
    for value in out.graph.output:
        if value.name not in wanted:
            continue
        value.type.tensor_type.ClearField("shape")
        for i in range(options.rank):
            value.type.tensor_type.shape.dim.add().dim_param = f"{value.name}_d{i}"
    # stale value_info for the outputs would contradict the new declaration
    keep = [v for v in out.graph.value_info if v.name not in wanted]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    if options.infer_shapes:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
    return out
