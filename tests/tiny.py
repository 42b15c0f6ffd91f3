"""Tiny CTC recognizers built with onnx.helper, shaped like ddddocr's model but a few KB big."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ocr_bundles_runtime.session import Runtime, make_session
from stages import modelio

HEIGHT = 8


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def tiny_ctc(
    classes: int = 7,
    features: int = 8,
    hidden: int = 6,
    head: str = "gemm",
    wrong_output_shape: bool = True,
    seed: int = 0,
    batch: bool = False,
) -> onnx.ModelProto:
    """input [1,1,8,W] -> Conv(SiLU) -> LSTM(bi) -> Gemm|MatMul+Add -> [W/2, 1, classes] logits.

    Like ddddocr's model, the declared output shape is wrong ([1, seqlen]) unless asked not to be,
    and the final Reshape's target holds the class count as a constant. With `batch`, the input
    is [N,1,8,W] and the head a 3-D MatMul+Add, so the output is [W/2, N, classes].
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("conv_w", rng.normal(0, 0.5, (features, 1, HEIGHT, 2)).astype(f32)),
        _init("conv_b", rng.normal(0, 0.1, features).astype(f32)),
        _init("sq_axes", np.array([2], np.int64)),
        _init("lstm_w", rng.normal(0, 0.4, (2, 4 * hidden, features)).astype(f32)),
        _init("lstm_r", rng.normal(0, 0.4, (2, 4 * hidden, hidden)).astype(f32)),
        _init("lstm_b", rng.normal(0, 0.1, (2, 8 * hidden)).astype(f32)),
        _init("flat_shape", np.array([-1, 2 * hidden], np.int64)),
        _init("out_shape", np.array([-1, 1, classes], np.int64)),
    ]
    head_w = rng.normal(0, 1.0, (classes, 2 * hidden)).astype(f32)
    head_b = rng.normal(0, 0.2, classes).astype(f32)
    nodes = [
        helper.make_node(
            "Conv", ["input1", "conv_w", "conv_b"], ["c"], strides=[HEIGHT, 2], name="conv"
        ),
        helper.make_node("Sigmoid", ["c"], ["c_sig"], name="sig"),
        helper.make_node("Mul", ["c", "c_sig"], ["c_silu"], name="silu"),
        helper.make_node("Squeeze", ["c_silu", "sq_axes"], ["sq"], name="squeeze"),
        helper.make_node("Transpose", ["sq"], ["seq"], perm=[2, 0, 1], name="to_tbf"),
        helper.make_node(
            "LSTM",
            ["seq", "lstm_w", "lstm_r", "lstm_b"],
            ["y"],
            direction="bidirectional",
            hidden_size=hidden,
            name="lstm",
        ),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3], name="y_t"),
    ]
    if batch:
        return _batch_head(rng, inits, nodes, classes, hidden, wrong_output_shape)
    nodes.append(helper.make_node("Reshape", ["yt", "flat_shape"], ["flat"], name="flatten"))
    if head == "gemm":
        inits += [_init("head_w", head_w), _init("head_b", head_b)]
        nodes.append(
            helper.make_node(
                "Gemm", ["flat", "head_w", "head_b"], ["logits2d"], transB=1, name="head"
            )
        )
    else:
        inits += [_init("head_w", head_w.T.copy()), _init("head_b", head_b)]
        nodes += [
            helper.make_node("MatMul", ["flat", "head_w"], ["mm"], name="head_mm"),
            helper.make_node("Add", ["mm", "head_b"], ["logits2d"], name="head_add"),
        ]
    nodes.append(helper.make_node("Reshape", ["logits2d", "out_shape"], ["logits"], name="out"))
    out_shape = [1, "seqlen"] if wrong_output_shape else ["T", 1, classes]
    graph = helper.make_graph(
        nodes,
        "tiny_ctc",
        [helper.make_tensor_value_info("input1", TensorProto.FLOAT, [1, 1, HEIGHT, "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    charset = [""] + [chr(ord("a") + i) for i in range(classes - 1)]
    return modelio.with_spec(model, charset, "TBC", 0)


def _batch_head(
    rng: np.random.Generator,
    inits: list[onnx.TensorProto],
    nodes: list[onnx.NodeProto],
    classes: int,
    hidden: int,
    wrong_output_shape: bool,
) -> onnx.ModelProto:
    """[T, N, 2, H] -> Reshape [0, 0, -1] -> MatMul + Add -> [T, N, classes]: batch-agnostic."""
    f32 = np.float32
    inits += [
        _init("keep_tn", np.array([0, 0, -1], np.int64)),
        _init("head_w", rng.normal(0, 1.0, (2 * hidden, classes)).astype(f32)),
        _init("head_b", rng.normal(0, 0.2, classes).astype(f32)),
    ]
    nodes += [
        helper.make_node("Reshape", ["yt", "keep_tn"], ["tnf"], name="to_tnf"),
        helper.make_node("MatMul", ["tnf", "head_w"], ["mm"], name="head_mm"),
        helper.make_node("Add", ["mm", "head_b"], ["logits"], name="head_add"),
    ]
    out_shape = [1, "seqlen"] if wrong_output_shape else ["T", "N", classes]
    graph = helper.make_graph(
        nodes,
        "tiny_ctc_batch",
        [helper.make_tensor_value_info("input1", TensorProto.FLOAT, ["N", 1, HEIGHT, "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        [i for i in inits if i.name not in ("flat_shape", "out_shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    charset = [""] + [chr(ord("a") + i) for i in range(classes - 1)]
    return modelio.with_spec(model, charset, "TBC", 0)


def inputs(n: int = 4, seed: int = 1, widths: tuple[int, ...] = (16, 24, 32)) -> list[np.ndarray]:
    """Random [1,1,8,W] inputs in [0, 1] with varying widths, like real calibration data."""
    rng = np.random.default_rng(seed)
    shapes = [widths[i % len(widths)] for i in range(n)]
    return [rng.random((1, 1, HEIGHT, w), dtype=np.float32) for w in shapes]


def skewed_inputs() -> list[np.ndarray]:
    """Values spread over [-10, 3] plus two pixels at +9 (0.14 % of 1472): the shape of a
    convolution's output before its activation, wide on one side with rare large values on the
    other."""
    images = [(-10.0 + 13.0 * x).astype(np.float32) for x in inputs(8)]
    images[2][0, 0, 1, 3] = images[5][0, 0, 4, 7] = 9.0
    return images


def run(model: onnx.ModelProto, x: np.ndarray, rt: Runtime | None = None) -> np.ndarray:
    """`model`'s first output for `x` in a session as the pipeline makes it (default `rt`:
    exact int8 kernels, so int8 tolerances hold on x86 with or without VNNI, and on ARM)."""
    sess = make_session(model.SerializeToString(), rt or Runtime())
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def assert_quantized_close(
    model: onnx.ModelProto, out: onnx.ModelProto, max_abs: float, min_agree: float
) -> None:
    """Quantized `out` stays within `max_abs` of `model`'s logits and agrees on the best class
    of at least `min_agree` of the time steps, over six fixed inputs of varying width."""
    agree = []
    for x in inputs(6, seed=7):
        ref, got = run(model, x), run(out, x)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= max_abs
        agree.append((got.argmax(-1) == ref.argmax(-1)).mean())
    assert np.mean(agree) >= min_agree


def tolerance_pair(**tuning) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """tiny_ctc through quantize_to_tolerance with a tolerance any model meets, its static
    group only: plain, then with `tuning` (options such as scale_search_images) on."""
    from stages import registry
    from stages.passes import quantize_to_tolerance as qtt

    ctx = registry.PassContext(
        calibration=inputs(8),
        validation={"clean": list(zip(inputs(6, seed=3), ["a"] * 6, strict=True))},
    )
    loose = {"max_accuracy_drop_pts": 100.0, "min_agreement": 0.0, "dynamic_op_types": []}
    return tuple(
        qtt.quantize_to_tolerance(tiny_ctc(), qtt.QuantizeToToleranceOptions(**loose, **t), ctx)
        for t in ({}, tuning)
    )


def tolerance_report(model: onnx.ModelProto) -> dict:
    """The quantize_to_tolerance report a model carries in its metadata."""
    import json

    from stages.passes.quantize_to_tolerance import REPORT_KEY

    return json.loads({p.key: p.value for p in model.metadata_props}[REPORT_KEY])
