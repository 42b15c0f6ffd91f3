"""Multiply-accumulates per node at a concrete input: the report's compute floor, and the
cost quantize_to_tolerance weighs a float node by (rank_by: sensitivity_per_mac)."""

from __future__ import annotations

import numpy as np
import onnx

from ocr_bundles_runtime.session import quiet_cpu_session

from . import modelio

_CONV = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "DynamicQuantizeMatMul"}
_RNN = {"LSTM": 4, "DynamicQuantizeLSTM": 4, "GRU": 3, "RNN": 1}


def tensor_shapes(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every initializer and every node output for input `x`, from one
    onnxruntime run with all intermediate tensors exposed as outputs (no optimization, so the
    tensors are the graph's own)."""
    declared = [o.name for o in model.graph.output]
    inner = [o for n in model.graph.node for o in n.output if o and o not in declared]
    probe = modelio.exposing(model, declared + inner)
    sess = quiet_cpu_session(probe.SerializeToString(), level="disable")
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: x})
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update({n: tuple(np.shape(v)) for n, v in zip(names, values, strict=True)})
    shapes[modelio.input_value(model).name] = tuple(x.shape)
    return shapes


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node (0 for ops that do no dot products)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in _CONV:
        w = shapes[node.input[_CONV[op]]]
        return int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        w = shapes[node.input[1]]
        return int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
    if op in _MATMUL:
        a = shapes[node.input[0]]
        k = a[-2] if attrs.get("transA") else a[-1]
        return int(np.prod(shapes[node.output[0]])) * int(k)
    if op == "Gemm":
        a = shapes[node.input[0]]
        k = a[0] if attrs.get("transA") else a[1]
        return int(np.prod(shapes[node.output[0]])) * int(k)
    if op in _RNN:
        x = shapes[node.input[0]]  # [T, B, In] (layout 0) or [B, T, In]
        steps, batch = (x[1], x[0]) if attrs.get("layout") else (x[0], x[1])
        hidden = int(attrs["hidden_size"])
        dirs = 2 if attrs.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
        return steps * batch * dirs * _RNN[op] * hidden * (x[2] + hidden)
    return 0
