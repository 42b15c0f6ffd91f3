"""Which part of a static int8 group costs agreement: its weights or its activations, and
which activations.

Graph rewrites of a QDQ model (quantize_static's output, quantize_to_tolerance's static group),
each undoing part of the quantization so that the rest's cost can be read alone against the
float model:

- weights_only: every activation QuantizeLinear -> DequantizeLinear pair is bypassed; the
  weights stay the dequantized int8 ones.
- activations_only: every weight and bias a node reads through a DequantizeLinear is the float
  model's again (the node of the same name there); the activation pairs stay.
- float_after(op_type): only the activations that `op_type` nodes produce are float again
  (GRAPH_INPUT: the graph's inputs); every other pair and every weight stays int8. One rewrite
  per producing op type (activation_producers) shows whether the activations' cost sits at one
  kind of tensor (a convolution's output, an activation function's, a residual sum) or is
  spread over all of them, and so whether keeping one kind float, or equalizing its channels,
  could win it back.

None is a model to ship: with part of a group float, onnxruntime cannot fuse the int8 kernels
and runs float ones. Dynamic int8 ops (DynamicQuantizeLSTM, MatMulInteger, ...) stay as they
are in all.
"""

from __future__ import annotations

from collections import Counter

import onnx

from . import modelio

GRAPH_INPUT = "graph input"  # activation_producers' name for the graph's own inputs


def weights_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its activations float: every DequantizeLinear of a QuantizeLinear's output
    is replaced by that QuantizeLinear's float input (graph outputs are kept as they are)."""
    return _bypassed(model, None)


def float_after(model: onnx.ModelProto, op_type: str) -> onnx.ModelProto:
    """`model` with only the activations that `op_type` nodes produce float (GRAPH_INPUT: the
    graph's inputs): weights_only restricted to the pairs quantizing those tensors."""
    return _bypassed(model, op_type)


def activation_producers(model: onnx.ModelProto) -> list[str]:
    """The op types whose outputs the model quantizes as activations (GRAPH_INPUT for the
    graph's inputs), the most quantized tensors first."""
    kinds = Counter(kind for _, kind in _activation_pairs(model).values())
    return [k for k, _ in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]


def _activation_pairs(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Per DequantizeLinear output of an activation pair: (the float tensor its QuantizeLinear
    reads, the op type that produced that tensor or GRAPH_INPUT). Graph outputs are left out:
    they stay as they are."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    pairs = {}
    for n in g.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        pair = q is not None and q.op_type == "QuantizeLinear" and n.input[0] not in inits
        if pair and n.output[0] not in outputs:
            source = producer.get(q.input[0])
            pairs[n.output[0]] = (q.input[0], source.op_type if source else GRAPH_INPUT)
    return pairs


def _bypassed(model: onnx.ModelProto, op_type: str | None) -> onnx.ModelProto:
    """`model` with the activation pairs of tensors `op_type` produced bypassed (None: all);
    raises ValueError when `op_type` produced none."""
    out = modelio.copy(model)
    bypass = {
        dq: tensor
        for dq, (tensor, kind) in _activation_pairs(out).items()
        if op_type is None or kind == op_type
    }
    if op_type is not None and not bypass:
        raise ValueError(f"no quantized activation of this model is produced by {op_type!r}")
    for n in out.graph.node:
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
