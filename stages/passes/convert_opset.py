"""Raise the model's default-domain opset to at least `opset` with onnx's version converter.

Before: ddddocr's common.onnx declares opset 12, where DequantizeLinear has no `axis`, so a
        per-channel QDQ quantization of its Conv weights is an invalid graph.
After:  the same graph at `opset` (13 by default): ops whose signature changed are rewritten
        by onnx.version_converter (e.g. Squeeze/Unsqueeze axes become inputs, Split's sizes
        an input); the model's metadata and declared outputs are kept.
A model already at `opset` or newer is returned unchanged, recorded as nothing to do: `opset`
is the lowest the later passes need, and lowering a newer export could only fail (onnx has no
down-adapter for many ops) or give up ops it uses; so one recipe fits old and new exports.
Exact: the converter's rewrites keep values; the build checks outputs after this pass.
"""

from __future__ import annotations

import onnx
from onnx import version_converter
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..errors import PassError
from ..registry import PassContext, register, unchanged

NAME = "convert_opset"


class ConvertOpsetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opset: int = Field(
        13,
        ge=7,
        le=onnx.defs.onnx_opset_version(),
        description="the lowest default-domain opset the model may have: an older one is "
        "converted to it, a newer one kept (never lowered); 13 is the lowest with per-axis "
        "(per-channel) QuantizeLinear/DequantizeLinear",
    )


@register(NAME, ConvertOpsetOptions, kind="convert", exact=True)
def convert_opset(
    model: onnx.ModelProto, options: ConvertOpsetOptions, context: PassContext
) -> onnx.ModelProto:
    """Raise the graph's opset to at least the target one."""
    current = default_opset(model)
    if current >= options.opset:
        return unchanged(
            model,
            NAME,
            f"the model uses opset {current} >= {options.opset}: nothing to convert; never lowered",
        )
    try:
        out = version_converter.convert_version(model, options.opset)
        onnx.checker.check_model(modelio.checkable(out))
    except Exception as e:  # the converter raises RuntimeError/ValidationError/IndexError
        raise PassError(
            NAME,
            f"onnx cannot convert opset {current} -> {options.opset} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); choose another opset",
        ) from e
    modelio.copy_metadata(out, model)
    declared = {v.name: v for v in model.graph.output}
    for value in out.graph.output:  # the converter re-infers them; keep what fix_output_shape set
        if value.name in declared:
            value.CopyFrom(declared[value.name])
    return out


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
