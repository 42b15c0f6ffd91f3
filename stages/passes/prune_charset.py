"""Restrict a CTC recognizer's classifier to the blank plus the allowed characters.

Before: ... -> Gemm(W[8210, 1024], b[8210]) -> Reshape([T, 1, -1]) -> logits [T, 1, 8210]
        (or MatMul(W[K, C]) -> Add(b[C])), charset metadata with 8210 entries.
After:  ... -> Gemm(W[37, 1024], b[37]) -> Reshape([T, 1, -1]) -> logits [T, 1, 37] for
        blank + a-z0-9, the rows kept in their original class order with the blank first;
        class-count constants in the Reshape targets and declared dims follow, and the `ocr.*`
        charset metadata lists the kept classes (blank = 0).
Exact on the kept classes: the output equals the original logits restricted to the columns
[blank] + allowed (ddddocr's `set_ranges` semantics); characters outside the set are gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..errors import ModelError, PassError
from ..registry import PassContext, register

NAME = "prune_charset"
# ops that only move values around, so the classifier's class axis survives them unchanged
SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# ops through which a Reshape target is assembled from constants
_SHAPE_BUILDERS = {"Concat": None, "Identity": 0, "Unsqueeze": 0, "Squeeze": 0, "Cast": 0}
MISSING_KEY = "ocr.pruned_missing"


class PruneCharsetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chars: str | None = Field(
        None,
        description="characters to keep besides the blank; null = the pipeline's charset "
        "(params.yaml: charset)",
    )
    on_missing: Literal["error", "skip"] = Field(
        "error",
        description="a character absent from the model's charset: 'error' fails, 'skip' drops "
        f"it and records it in metadata '{MISSING_KEY}'",
    )


@dataclass
class _Head:
    """Where the class axis lives: the weight (and bias) inputs to slice, on which axis."""

    weight: tuple[onnx.NodeProto, int, int]  # node, input index, class axis
    bias: tuple[onnx.NodeProto, int] | None  # node, input index; class axis is the last one
    classes: int
    values: list[str]  # tensors from the classifier to the output that carry the class axis
    reshapes: list[onnx.NodeProto]  # Reshapes whose target may hold the class count


@register(NAME, PruneCharsetOptions, kind="prune", exact=False)
def prune_charset(
    model: onnx.ModelProto, options: PruneCharsetOptions, context: PassContext
) -> onnx.ModelProto:
    """Keep only the blank and the allowed characters' classifier rows."""
    try:
        spec = modelio.spec(model)
    except ModelError as e:
        raise PassError(NAME, str(e)) from e
    keep, missing = _kept_classes(spec, options, context)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    head = _find_head(out.graph, spec.output_name, len(spec.charset))
    _slice_head(out.graph, head, keep)
    _fix_class_count(out.graph, head, len(spec.charset), len(keep))
    return _with_charset(out, model, [spec.charset[i] for i in keep], spec.layout, missing)


def _kept_classes(
    spec: modelio.CtcSpec, options: PruneCharsetOptions, context: PassContext
) -> tuple[list[int], list[str]]:
    """Class indices to keep (blank first, then original order) and the skipped characters."""
    chars = list(dict.fromkeys(options.chars or context.allowed_chars))
    if not chars:
        raise PassError(NAME, "no characters to keep: set options 'chars' or params.yaml 'charset'")
    known = set(spec.charset)
    missing = [c for c in chars if c not in known]
    if missing and options.on_missing == "error":
        raise PassError(
            NAME,
            f"characters {missing} are not in the model's charset; remove them from 'chars' "
            "(or params.yaml 'charset') or set on_missing: skip",
        )
    wanted = set(chars)
    # every column whose entry is allowed, so duplicated charset entries all survive
    rest = [i for i, c in enumerate(spec.charset) if c in wanted and i != spec.blank]
    if not rest:
        raise PassError(NAME, f"none of {chars} is in the model's charset; nothing would be kept")
    if len(rest) + 1 == len(spec.charset):
        raise PassError(
            NAME,
            f"the allowed characters cover all {len(spec.charset)} classes, nothing to prune; "
            "narrow 'chars' or drop the pass",
        )
    return [spec.blank, *rest], missing


def _find_head(graph: onnx.GraphProto, output: str, classes: int) -> _Head:
    """Walk back from the output through shape-only ops to the classifier."""
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    values, reshapes = [output], []
    node = producers.get(output)
    while node is not None and node.op_type in SHAPE_OPS:
        if node.op_type == "Reshape":
            reshapes.append(node)
        values.append(node.input[0])
        node = producers.get(node.input[0])
    head = _as_classifier(node, producers, inits)
    if head is None:
        reached = f"{node.op_type} '{node.name}'" if node is not None else "a graph input"
        raise PassError(
            NAME,
            f"no classifier found: walking back from output '{output}' through "
            f"{'/'.join(SHAPE_OPS)} reached {reached}, not a Gemm with an initializer weight "
            "(and optional initializer bias) nor a MatMul[+Add] with initializer weight and bias; "
            "this model cannot be pruned, drop the pass from the recipe",
        )
    if head.classes != classes:
        raise PassError(
            NAME,
            f"the classifier has {head.classes} classes but the model's charset (ocr.charset) "
            f"has {classes} entries; use the charset that matches this model",
        )
    head.values = values + head.values
    head.reshapes = reshapes
    return head


def _as_classifier(
    node: onnx.NodeProto | None,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> _Head | None:
    if node is None:
        return None
    if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in inits:
        has_bias = len(node.input) > 2 and node.input[2] != ""
        if has_bias and node.input[2] not in inits:
            return None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
        classes = inits[node.input[1]].dims[axis]
        return _Head((node, 1, axis), (node, 2) if has_bias else None, classes, [], [])
    if node.op_type == "Add":
        for i in (0, 1):
            mm = producers.get(node.input[1 - i])
            if node.input[i] in inits and mm is not None:
                head = _as_classifier(mm, producers, inits) if mm.op_type == "MatMul" else None
                if head is not None:
                    head.bias, head.values = (node, i), [mm.output[0]]
                    return head
        return None
    if node.op_type == "MatMul" and node.input[1] in inits:
        weight = inits[node.input[1]]
        return _Head((node, 1, len(weight.dims) - 1), None, weight.dims[-1], [], [])
    return None


def _slice_head(graph: onnx.GraphProto, head: _Head, keep: list[int]) -> None:
    inits = {t.name: t for t in graph.initializer}
    node, idx, axis = head.weight
    weight = numpy_helper.to_array(inits[node.input[idx]])
    _put(graph, node, idx, np.take(weight, keep, axis=axis))
    if head.bias is None:
        return
    node, idx = head.bias
    bias = numpy_helper.to_array(inits[node.input[idx]])
    # a bias broadcast along the class axis (size 1) stays as it is
    if bias.ndim and bias.shape[-1] == head.classes:
        _put(graph, node, idx, np.take(bias, keep, axis=-1))


def _fix_class_count(graph: onnx.GraphProto, head: _Head, old: int, new: int) -> None:
    """Reshape targets and declared dims that spell out the class count get the new one."""
    for reshape in head.reshapes:
        _fix_shape_source(graph, reshape, 1, old, new)
    declared = [*graph.output, *graph.value_info]
    for value in declared:
        if value.name not in head.values:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value == old:
                dim.dim_value = new


def _fix_shape_source(
    graph: onnx.GraphProto, consumer: onnx.NodeProto, idx: int, old: int, new: int
) -> None:
    """Follow a shape tensor back through Concat/Unsqueeze/... to its constants."""
    name = consumer.input[idx]
    const = _constant(graph, name)
    if const is not None:
        if const.dtype.kind == "i" and old in const:
            _put(graph, consumer, idx, np.where(const == old, new, const).astype(const.dtype))
        return
    node = next((n for n in graph.node if name in n.output), None)
    if node is None or node.op_type not in _SHAPE_BUILDERS:
        return  # computed at run time (Shape/Gather): already right
    first = _SHAPE_BUILDERS[node.op_type]
    for i in range(len(node.input)) if first is None else [first]:
        _fix_shape_source(graph, node, i, old, new)


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    node = next((n for n in graph.node if n.op_type == "Constant" and name in n.output), None)
    if node is None:
        return None
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_ints":
            return np.array(attr.ints, np.int64)
    return None


def _put(graph: onnx.GraphProto, node: onnx.NodeProto, idx: int, arr: np.ndarray) -> None:
    """Give `node` input `idx` the value `arr`, in place unless others read the old value."""
    name = node.input[idx]
    uses = sum(list(n.input).count(name) for n in graph.node)
    uses += sum(o.name == name for o in graph.output)
    if uses == 1:
        for tensor in graph.initializer:
            if tensor.name == name:
                tensor.CopyFrom(numpy_helper.from_array(arr, name))
                _redeclare_input(graph, name, arr)
                return
        for const in graph.node:
            if const.op_type == "Constant" and name in const.output:
                del const.attribute[:]
                const.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
                return
    # shared: a fresh initializer for this node only, the others keep the old value
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    fresh, k = f"{name}_pruned", 1
    while fresh in taken:
        fresh, k = f"{name}_pruned{k}", k + 1
    graph.initializer.append(numpy_helper.from_array(arr, fresh))
    node.input[idx] = fresh


def _redeclare_input(graph: onnx.GraphProto, name: str, arr: np.ndarray) -> None:
    """Old-IR models list initializers as inputs; their declared shape must follow."""
    for value in graph.input:
        if value.name == name:
            elem = value.type.tensor_type.elem_type
            value.CopyFrom(helper.make_tensor_value_info(name, elem, list(arr.shape)))


def _with_charset(
    out: onnx.ModelProto,
    source: onnx.ModelProto,
    charset: list[str],
    layout: str,
    missing: list[str],
) -> onnx.ModelProto:
    """The new charset (blank at 0) plus every other ocr.* key the input carried."""
    result = modelio.with_spec(out, charset, layout, 0)
    own = {f"ocr.{k}" for k in ("charset", "layout", "blank")}
    if missing:  # this run's skipped characters replace any earlier record
        own.add(MISSING_KEY)
    for prop in source.metadata_props:
        if prop.key.startswith("ocr.") and prop.key not in own:
            result.metadata_props.add(key=prop.key, value=prop.value)
    if missing:
        result.metadata_props.add(key=MISSING_KEY, value=json.dumps(missing, ensure_ascii=False))
    return result
