"""Move weights held in Constant nodes into graph initializers.

Before: Constant(value=W[6625, 120]) -> MatMul(x, W), as some exporters (e.g. Paddle2ONNX)
        write weights.
After:  MatMul(x, W) with W an initializer of the same name; the Constant node is gone.
Exact: the tensors are moved, not changed. Only tensor-valued Constants are lifted (value_ints
       and friends stay, as do Constants inside subgraphs, which cannot reach initializers).
Why: onnxruntime's quantizers, prune_charset and size accounting only see initializers.
"""

from __future__ import annotations

import onnx
from onnx import helper
from pydantic import BaseModel, ConfigDict, Field

from ..errors import PassError
from ..registry import PassContext, register

NAME = "lift_constants"


class LiftConstantsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_elements: int = Field(
        1,
        ge=1,
        description="lift only tensors with at least this many elements (1: every tensor; "
        "raise it to keep small shape constants as nodes)",
    )


@register(NAME, LiftConstantsOptions, kind="cleanup", exact=True)
def lift_constants(
    model: onnx.ModelProto, options: LiftConstantsOptions, context: PassContext
) -> onnx.ModelProto:
    """Turn tensor-valued Constant nodes into initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    outputs = {o.name for o in graph.output}
    kept, lifted = [], 0
    for node in graph.node:
        tensor = _tensor(node)
        if tensor is None or _elements(tensor) < options.min_elements or node.output[0] in outputs:
            kept.append(node)
            continue
        lifted_tensor = onnx.TensorProto()
        lifted_tensor.CopyFrom(tensor)
        lifted_tensor.name = node.output[0]
        graph.initializer.append(lifted_tensor)
        if out.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
            graph.input.append(
                helper.make_tensor_value_info(
                    lifted_tensor.name, lifted_tensor.data_type, list(lifted_tensor.dims)
                )
            )
        lifted += 1
    if not lifted:
        raise PassError(
            NAME,
            f"the model has no tensor-valued Constant node with at least {options.min_elements} "
            "elements; drop the pass",
        )
    del graph.node[:]
    graph.node.extend(kept)
    return out


def _tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: a for a in node.attribute}
    return attrs["value"].t if set(attrs) == {"value"} else None


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count
