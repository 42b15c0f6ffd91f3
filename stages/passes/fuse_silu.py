"""Fuse SiLU, x * Sigmoid(x), into onnxruntime's one-kernel QuickGelu(x, alpha=1).

Before: s = Sigmoid(x); y = Mul(x, s), as exporters write SiLU (Swish).
After:  y = com.microsoft.QuickGelu(x, alpha=1.0); Sigmoid and Mul are gone.
Exact: onnxruntime's QuickGelu computes the same logistic (MlasComputeLogistic, as its Sigmoid
       does) and the same float product on every CPU, so outputs are bit-identical.
Why: onnxruntime makes this fusion itself in float models, but not in a static QDQ model: it
     gives each node reading a DequantizeLinear its own copy, so Sigmoid and Mul then read two
     tensors and the pattern no longer matches. The SiLU then runs as a Sigmoid, a Mul and a
     second DequantizeLinear (measured on low's model: 0.26 ms of 2.4 per captcha, one thread).
     Run it after quantization; QuickGelu is in every onnxruntime build, ARM, web and node too.
Nothing to fuse (no SiLU, or each Sigmoid also feeds another node): the input unchanged,
recorded as nothing to do.
"""

from __future__ import annotations

import onnx
from onnx import helper
from pydantic import BaseModel, ConfigDict, Field

from .. import modelio
from ..registry import PassContext, register, unchanged

NAME = "fuse_silu"
DOMAIN = "com.microsoft"


class FuseSiluOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    only_after_dequantize: bool = Field(
        False,
        description="fuse only the SiLUs that read a DequantizeLinear's output (those "
        "onnxruntime cannot fuse when it loads the model); the others stay standard ONNX "
        "ops, which onnxruntime fuses at load unless its optimizations are off",
    )


@register(NAME, FuseSiluOptions, kind="fuse", exact=True)
def fuse_silu(
    model: onnx.ModelProto, options: FuseSiluOptions, context: PassContext
) -> onnx.ModelProto:
    """Replace each Mul(x, Sigmoid(x)) by QuickGelu(x, alpha=1)."""
    out = modelio.copy(model)
    graph = out.graph
    pairs = _silus(graph, options.only_after_dequantize)
    if not pairs:
        which = " reading a DequantizeLinear" if options.only_after_dequantize else ""
        return unchanged(
            model, NAME, f"no Mul(x, Sigmoid(x)){which} whose Sigmoid feeds only that Mul"
        )
    sigmoids = {id(s) for s, _ in pairs}
    fused = {id(m): _quick_gelu(s, m) for s, m in pairs}
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in sigmoids]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


def _silus(
    graph: onnx.GraphProto, after_dequantize: bool
) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(Sigmoid, Mul) pairs of the main graph where Mul reads x and Sigmoid(x), and nothing
    else (no other node, no graph output) reads the Sigmoid's output; with
    `after_dequantize`, only those whose x a DequantizeLinear produces."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    pairs = []
    for node in graph.node:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        for x, s in (node.input, node.input[::-1]):
            sig = producer.get(s)
            if (
                sig is not None
                and sig.op_type == "Sigmoid"
                and sig.domain in ("", "ai.onnx")
                and sig.input[0] == x
                and readers[s] == 1
                and s not in outputs
                and (
                    not after_dequantize
                    or getattr(producer.get(x), "op_type", None) == "DequantizeLinear"
                )
            ):
                pairs.append((sig, node))
                break
    return pairs


def _quick_gelu(sig: onnx.NodeProto, mul: onnx.NodeProto) -> onnx.NodeProto:
    return helper.make_node(
        "QuickGelu", [sig.input[0]], list(mul.output), mul.name or f"{sig.name}_silu",
        domain=DOMAIN, alpha=1.0,
    )  # fmt: skip
