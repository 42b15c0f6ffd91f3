"""Restrict a CTC recognizer's classifier to the blank plus the allowed characters.

Before: ... -> Gemm(W[8210, 1024], b[8210]) -> Reshape([T, 1, -1]) -> logits [T, 1, 8210]
        (or MatMul(W[K, C]) -> Add(b[C])), charset metadata with 8210 entries.
After:  ... -> Gemm(W[37, 1024], b[37]) -> Reshape([T, 1, -1]) -> logits [T, 1, 37] for
        blank + a-z0-9, the rows kept in their original class order with the blank first;
        class-count constants in the Reshape targets and declared dims follow, and the `ocr.*`
        charset metadata lists the kept classes (blank = 0).
Also recognized: a 1x1 Conv head (W[C, K, 1, 1], b[C]) followed by Squeeze/Transpose, and a
trailing Softmax/LogSoftmax over the class axis (traced through Transposes), which then
normalizes over the kept classes only. Weights held in Constant nodes are not found: the
error says to add lift_constants first.
Exact on the kept classes: the output equals the original logits restricted to the columns
[blank] + allowed (ddddocr's `set_ranges` semantics); characters outside the set are gone.
Behind a Softmax the output is those columns renormalized to sum to 1 (a LogSoftmax: the same
in log space), so the best class of every frame among the kept ones is unchanged.
Allowed characters covering every class: the input unchanged, recorded as nothing to do (the
site's charset may be the model's whole charset).
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
from ..registry import PassContext, register, unchanged
from .convert_opset import default_opset

NAME = "prune_charset"
# ops that only move values around, so the classifier's class axis survives them unchanged
SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# normalizations over the class axis: pruning before them renormalizes over the kept classes
NORM_OPS = ("Softmax", "LogSoftmax")
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
    keep_whitespace: bool = Field(
        True,
        description="also keep the model's whitespace classes (space, U+3000): line "
        "recognizers emit them between words and at line ends, where scoring strips them; "
        "without them the model must pick another class there (measured on ddddocr's model: "
        "no accuracy change either way)",
    )


@dataclass
class _Head:
    """Where the class axis lives: the weight (and bias) inputs to slice, on which axis."""

    weight: tuple[onnx.NodeProto, int, int]  # node, input index, class axis
    bias: tuple[onnx.NodeProto, int] | None  # node, input index; class axis is the last one
    classes: int
    values: list[str]  # tensors from the classifier to the output that carry the class axis
    reshapes: list[onnx.NodeProto]  # Reshapes whose target may hold the class count


@register(NAME, PruneCharsetOptions, kind="prune", exact=True)
def prune_charset(
    model: onnx.ModelProto, options: PruneCharsetOptions, context: PassContext
) -> onnx.ModelProto:
    """Keep only the blank and the allowed characters' classifier rows."""
    try:
        spec = modelio.spec(model)
    except ModelError as e:
        raise PassError(NAME, str(e)) from e
    keep, missing = _kept_classes(spec, options, context)
    if len(keep) == len(spec.charset):
        # the model keeps no record here, so the skipped characters go into the reason
        skipped = f" (skipped, not in the model's charset: {missing})" if missing else ""
        return unchanged(
            model,
            NAME,
            f"the allowed characters cover all {len(spec.charset)} classes: nothing to prune"
            + skipped,
        )
    out = modelio.copy(model)
    head = _find_head(out, spec.output_name, len(spec.charset), spec.layout)
    _slice_head(out.graph, head, keep)
    _fix_class_count(out.graph, head, len(spec.charset), len(keep))
    return _with_charset(out, [spec.charset[i] for i in keep], spec, missing)


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
    wanted = set(chars) | (
        {c for c in spec.charset if c.isspace()} if options.keep_whitespace else set()
    )
    # every column whose entry is allowed, so duplicated charset entries all survive
    rest = [i for i, c in enumerate(spec.charset) if c in wanted and i != spec.blank]
    if not rest:
        raise PassError(NAME, f"none of {chars} is in the model's charset; nothing would be kept")
    return [spec.blank, *rest], missing


def _find_head(model: onnx.ModelProto, output: str, classes: int, layout: str) -> _Head:
    """Walk back from the output through shape-only ops and a Softmax to the classifier."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    values, reshapes = [output], []
    # the class axis of values[-1], counted from the end (None: lost on the way)
    axis: int | None = -1
    ranks = _Ranks(model)
    walked: list[str] = []  # op types between the output and `node`
    node = producers.get(output)
    while node is not None and node.op_type in (*SHAPE_OPS, *NORM_OPS):
        if node.op_type == "Reshape":
            reshapes.append(node)
        if node.op_type in NORM_OPS:
            rank = ranks.get(node.input[0]) or 3  # unknown: the rank-3 output's
            tbc_output = layout == "TBC" and all(n in NORM_OPS or n == "Identity" for n in walked)
            _check_class_axis(node, axis, rank, default_opset(model), tbc_output)
        walked.append(node.op_type)
        axis = _class_axis_before(node, axis, ranks)
        values.append(node.input[0])
        node = producers.get(node.input[0])
    head = _as_classifier(node, producers, inits)
    if head is None:
        reached = f"{node.op_type} '{node.name}'" if node is not None else "a graph input"
        hint = (
            "its weights are Constant nodes: add lift_constants before this pass"
            if _held_by_constants(node, producers)
            else "this model cannot be pruned, drop the pass (overrides.<class>.passes."
            "prune_charset: null)"
        )
        raise PassError(
            NAME,
            f"no classifier found: walking back from output '{output}' through "
            f"{'/'.join(SHAPE_OPS + NORM_OPS)} reached {reached}, not a Gemm, MatMul[+Add] or "
            f"1x1 Conv with initializer weights (and bias); {hint}",
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


class _Ranks:
    """Ranks onnx shape inference can prove (never the declared outputs: ddddocr's is wrong),
    inferred on first use only: most heads have no Softmax to check."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model, self._ranks = model, None

    def get(self, name: str) -> int | None:
        if self._ranks is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self._model, strict_mode=False)
                values = inferred.graph.value_info
            except Exception:  # inference raises its own error types: ranks unknown
                values = []
            self._ranks = {
                v.name: len(v.type.tensor_type.shape.dim)
                for v in values
                if v.type.tensor_type.HasField("shape")
            }
        return self._ranks.get(name)


def _class_axis_before(node: onnx.NodeProto, axis: int | None, ranks: _Ranks) -> int | None:
    """The class axis (counted from the end) of `node`'s first input, given its output's.

    Transpose moves it by its perm; Reshape/Squeeze/Unsqueeze/Flatten split or merge the
    leading axes of these heads, so a last class axis stays last (the classifier check and the
    Reshape-target fix assume the same); any other position is lost."""
    if axis is None or node.op_type in ("Identity", *NORM_OPS):
        return axis
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is None:  # no perm: the axes reversed
            rank = ranks.get(node.input[0])
            perm = None if rank is None else list(range(rank))[::-1]
        if perm is None or not -len(perm) <= axis < 0:
            return None
        return perm[len(perm) + axis] - len(perm)
    return -1 if axis == -1 else None


def _check_class_axis(
    node: onnx.NodeProto, class_axis: int | None, rank: int, opset: int, tbc_output: bool
) -> None:
    """A Softmax must normalize over exactly the class axis for the pruned output to be the
    input's renormalized over the kept classes. Before opset 13 Softmax flattens its input from
    `axis` (default 1) on, which is the class axis only from the last axis, or from axis 1 of
    the [T, 1, C] output itself (its batch axis has size 1)."""
    attr = next((a.i for a in node.attribute if a.name == "axis"), None)
    axis = (-1 if opset >= 13 else 1) if attr is None else attr
    normalized = axis - rank if axis >= 0 else axis
    if opset >= 13:
        ok = class_axis is not None and normalized == class_axis
    else:
        ok = class_axis == -1 and (normalized == -1 or (tbc_output and normalized == -2))
    if ok:
        return
    where = "an axis that cannot be traced" if class_axis is None else f"axis {class_axis}"
    raise PassError(
        NAME,
        f"{node.op_type} '{node.name}' normalizes over axis {axis} (of {rank}), but the classes "
        f"are on {where} of its input; pruning would not leave the input's output renormalized "
        "over the kept classes, so this model cannot be pruned",
    )


def _held_by_constants(node: onnx.NodeProto | None, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether the classifier that was not recognized reads its weights from Constant nodes
    (directly, or for MatMul + Add through the MatMul)."""
    if node is None:
        return False
    near = [node]
    if node.op_type == "Add":
        near += [producers[i] for i in node.input if i in producers]
    return any(
        i in producers and producers[i].op_type == "Constant"
        for n in near
        if n.op_type in ("Gemm", "MatMul", "Conv", "Add")
        for i in (n.input if n.op_type == "Add" else n.input[1:])
    )


def _as_classifier(
    node: onnx.NodeProto | None,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> _Head | None:
    if node is None:
        return None
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
        weight = inits[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if list(weight.dims[2:]) != [1, 1] or group != 1:
            return None
        has_bias = len(node.input) > 2 and node.input[2] != ""
        if has_bias and node.input[2] not in inits:
            return None
        return _Head((node, 1, 0), (node, 2) if has_bias else None, weight.dims[0], [], [])
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
    charset: list[str],
    spec: modelio.CtcSpec,
    missing: list[str],
) -> onnx.ModelProto:
    """The new charset (blank at 0); every other metadata key of the input stays. This run's
    skipped characters replace any earlier record of them."""
    result = modelio.with_spec(out, charset, spec.layout, 0, spec.kind)
    if missing:
        kept = [p for p in result.metadata_props if p.key != MISSING_KEY]
        del result.metadata_props[:]
        result.metadata_props.extend(kept)
        result.metadata_props.add(key=MISSING_KEY, value=json.dumps(missing, ensure_ascii=False))
    return result
