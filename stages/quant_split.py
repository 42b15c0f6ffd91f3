"""Which half of a static int8 group costs agreement: its weights or its activations.

Two graph rewrites of a QDQ model (quantize_static's output, quantize_to_tolerance's static
group), each undoing one half of the quantization so that the other half's cost can be read
alone against the float model:

- weights_only: every activation QuantizeLinear -> DequantizeLinear pair is bypassed; the
  weights stay the dequantized int8 ones.
- activations_only: every weight and bias a node reads through a DequantizeLinear is the float
  model's again (the node of the same name there); the activation pairs stay.

Neither is a model to ship: with one half gone onnxruntime cannot fuse the int8 kernels and runs
float ones. Dynamic int8 ops (DynamicQuantizeLSTM, MatMulInteger, ...) stay as they are in both.
"""

from __future__ import annotations

import onnx

from . import modelio


def weights_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its activations float: every DequantizeLinear of a QuantizeLinear's output
    is replaced by that QuantizeLinear's float input (graph outputs are kept as they are)."""
    out = modelio.copy(model)
    g = out.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    bypass = {}
    for n in g.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        pair = q is not None and q.op_type == "QuantizeLinear" and n.input[0] not in inits
        if pair and n.output[0] not in outputs:
            bypass[n.output[0]] = q.input[0]
    for n in g.node:
        n.input[:] = [bypass.get(x, x) for x in n.input]
    return _pruned(out)


def activations_only(model: onnx.ModelProto, float_model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the float model's weights and biases wherever a node reads a dequantized
    initializer; raises ValueError naming a node that has no twin to take them from."""
    out = modelio.copy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    twins = {n.name: n for n in float_model.graph.node if n.name}
    floats = {t.name: t for t in float_model.graph.initializer}
    for n in g.node:
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            n.input[i] = _float_input(n, i, twins, floats, out, inits)
    return _pruned(out)


def _float_input(
    node: onnx.NodeProto, i: int, twins: dict[str, onnx.NodeProto],
    floats: dict[str, onnx.TensorProto], out: onnx.ModelProto, inits: dict[str, onnx.TensorProto],
) -> str:  # fmt: skip
    """The name of the float model's initializer that `node`'s input `i` was quantized from,
    added to `out` under a name of its own."""
    twin = twins.get(node.name)
    if twin is None or twin.op_type != node.op_type or i >= len(twin.input):
        raise ValueError(
            f"node {node.name!r} ({node.op_type}) reads a dequantized initializer, but the float "
            "model has no node of that name and type to take the float one from"
        )
    source = floats.get(twin.input[i])
    if source is None:
        raise ValueError(
            f"node {node.name!r} input {i}: {twin.input[i]!r} is not an initializer of the "
            "float model"
        )
    name = f"{source.name}_float"
    if name not in inits:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(source)
        tensor.name = name
        out.graph.initializer.append(tensor)
        inits[name] = tensor
    return name


def _pruned(model: onnx.ModelProto) -> onnx.ModelProto:
    """Without the nodes no graph output depends on any more, nor the initializers only they
    read: what the rewrites left dangling. A graph with subgraphs (If, Loop, Scan), whose
    bodies read outer names, is left whole."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):  # fmt: skip
        return model
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(x for x in n.input if x)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)
    return model
