"""Fold constants and drop redundant nodes with onnxsim, checked on random inputs.

Before: ddddocr's export: 102 nodes, the LSTM's zero initial states built at run time by
        Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape chains, Constant nodes, and
        (in other exports) Identity nodes and BatchNormalization after Conv.
After:  63 nodes: constant subgraphs folded into initializers, Identity removed, BatchNorm folded
        into the preceding Conv (unless `skip_fuse_bn`); the input keeps its dynamic width.
Exact: onnxsim compares the two models on `check_n` random inputs (rtol 1e-4, atol 1e-5) and
       the pass fails when they differ. The check needs concrete input shapes, so the dynamic
       width is set to `check_width` for the check only; the returned model keeps it dynamic.

onnxsim records its own bookkeeping (`onnxsim.*` keys, lists of removed nodes) in
metadata_props; the output carries exactly the input's metadata_props instead, so the model's
metadata stays the CTC contract and does not grow with every run.
"""

from __future__ import annotations

import contextlib
import io

import onnx
import onnxsim
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..errors import PassError
from ..registry import PassContext, register


class SimplifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check_n: int = Field(
        3, ge=0, le=100, description="random-input comparisons onnxsim runs; 0 skips the check"
    )
    check_width: int = Field(
        160,
        ge=1,
        description="input width used for the check only (the models' width is dynamic and "
        "the returned model keeps it dynamic); must be wide enough for the model's convolutions",
    )
    perform_optimization: bool = Field(
        True, description="run onnx-optimizer's fusions and eliminations, not just const folding"
    )
    skip_fuse_bn: bool = Field(
        False, description="keep BatchNormalization nodes instead of folding them into Conv"
    )


@register("simplify", SimplifyOptions, kind="cleanup", exact=True)
def simplify(
    model: onnx.ModelProto, options: SimplifyOptions, context: PassContext
) -> onnx.ModelProto:
    """Simplify with onnxsim and fail unless its random-input check passes."""
    shapes = _check_shapes(model, options.check_width, context) if options.check_n else None
    log = io.StringIO()
    try:
        # onnxsim prints progress and its check's diff to stdout; keep it for the error message
        with contextlib.redirect_stdout(log):
            out, ok = onnxsim.simplify(
                model,
                check_n=options.check_n,
                perform_optimization=options.perform_optimization,
                skip_fuse_bn=options.skip_fuse_bn,
                test_input_shapes=shapes,
                certify=False,  # best-effort z3 proof: slow, and only when z3 happens to exist
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise PassError(
            "simplify",
            f"onnxsim failed with test input shapes {shapes} ({type(e).__name__}: {first}); "
            "if the model rejects that shape, change check_width, or the input height/channels "
            "(params.yaml model.input) if they do not fit this model",
        ) from e
    if not ok:
        raise PassError(
            "simplify",
            f"onnxsim's check found outputs that changed on {options.check_n} random inputs "
            f"{shapes} ({_tail(log.getvalue())}); try skip_fuse_bn: true or "
            "perform_optimization: false, or check_n: 0 to accept the result unchecked",
        )
    _require_same_inputs(model, out)
    return modelio.copy_metadata(out, model)


def _check_shapes(model: onnx.ModelProto, width: int, context: PassContext) -> dict[str, list[int]]:
    """Concrete shapes for onnxsim's check: batch 1, the contract's channels and height (a
    dynamic height is fine: the model's input contract knows it), width `width` (or the
    contract's padded width), every other dim as declared."""
    initializers = {t.name for t in model.graph.initializer}
    contract = context.input
    known = {1: contract.channels, 2: contract.height}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in _dims(value)]
        for axis, size in enumerate(dims):
            if size > 0:
                continue
            if axis == 0:
                dims[axis] = 1
            elif axis == len(dims) - 1:
                dims[axis] = contract.pad_to_width or width
            elif len(dims) == 4 and axis in known:
                dims[axis] = known[axis]
            else:
                raise PassError(
                    "simplify",
                    f"input '{value.name}' has a dynamic dim at axis {axis} of {len(dims)} "
                    "that the input contract does not fix; set check_n: 0 to simplify "
                    "without checking",
                )
        shapes[value.name] = dims
    return shapes


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    return list(value.type.tensor_type.shape.dim)


def _require_same_inputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The check shape must not leak into the result: dynamic dims stay dynamic."""
    old = {v.name: [str(d).strip() for d in _dims(v)] for v in before.graph.input}
    for value in after.graph.input:
        new = [str(d).strip() for d in _dims(value)]
        if value.name in old and new != old[value.name]:
            raise PassError(
                "simplify",
                f"onnxsim changed input '{value.name}' from {old[value.name]} to {new}; "
                "set check_n: 0 so no test shape is passed",
            )


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return " / ".join(kept)[:400] or "no details printed"
