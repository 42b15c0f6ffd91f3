"""Move weights held in Constant nodes into graph initializers.

Before: Constant(value=W[6625, 120]) -> MatMul(x, W), as some exporters (e.g. Paddle2ONNX)
        write weights.
After:  MatMul(x, W) with W an initializer of the same name; the Constant node is gone.
Exact: the tensors are moved, not changed. Only tensor-valued Constants are lifted (value_ints
       and friends stay, as do Constants inside subgraphs, which cannot reach initializers);
       `floats_only` lifts the weights and leaves integer shape constants as they were.
Why: onnxruntime's quantizers, prune_charset and size accounting only see initializers.
Nothing to lift (weights already initializers, as in ddddocr's export): the input unchanged,
recorded as nothing to do, so the shipped recipes fit either kind of export.
"""

from __future__ import annotations

import onnx
from onnx import helper
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..registry import PassContext, register, unchanged

NAME = "lift_constants"
FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, *modelio.HALF_TYPES})


class LiftConstantsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_elements: int = Field(
        1,
        ge=1,
        description="lift only tensors with at least this many elements (1: every tensor; "
        "raise it to keep small shape constants as nodes)",
    )
    floats_only: bool = Field(
        False,
        description="lift only floating-point tensors (weights, biases: what the quantizers "
        "need as initializers); integer ones (shapes, axes, indices) stay nodes, which "
        "simplify folds anyway",
    )


@register(NAME, LiftConstantsOptions, kind="cleanup", exact=True)
def lift_constants(
    model: onnx.ModelProto, options: LiftConstantsOptions, context: PassContext
) -> onnx.ModelProto:
    """Turn tensor-valued Constant nodes into initializers."""
    out = modelio.copy(model)
    graph = out.graph
    outputs = {o.name for o in graph.output}
    kept, lifted = [], 0
    for node in graph.node:
        tensor = _tensor(node)
        if tensor is None or not _wanted(tensor, options) or node.output[0] in outputs:
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
        return unchanged(
            model,
            NAME,
            f"no {'float ' if options.floats_only else ''}tensor-valued Constant node with >= "
            f"{options.min_elements} elements: weights are already initializers",
        )
    del graph.node[:]
    graph.node.extend(kept)
    return out


def _tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: a for a in node.attribute}
    return attrs["value"].t if set(attrs) == {"value"} else None


def _wanted(tensor: onnx.TensorProto, options: LiftConstantsOptions) -> bool:
    if options.floats_only and tensor.data_type not in FLOATS:
        return False
    return _elements(tensor) >= options.min_elements


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count
