import numpy as np
import onnx
import pytest
import tiny
from onnx import numpy_helper

from stages import registry
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static
from stages.quant_split import (
    GRAPH_INPUT,
    activation_producers,
    activations_only,
    float_after,
    weights_only,
)

CTX = registry.PassContext(calibration=tiny.inputs(8))
XS = tiny.inputs(6, seed=7)


def quantized(**opts) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = tiny.tiny_ctc()
    return model, quantize_static(model, QuantizeStaticOptions(op_types=["Conv", "Gemm"], **opts),
                                  CTX)  # fmt: skip


def outputs(model: onnx.ModelProto) -> np.ndarray:
    return np.concatenate([tiny.run(model, x).ravel() for x in XS])


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return out


def dequantized_weights(q: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each quantized node's int8 weight and int32 bias, dequantized, under the float model's
    initializer names (nodes matched by name)."""
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    twins = {n.name: n for n in float_model.graph.node}
    out = {}
    for n in q.graph.node:
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                v, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]]
                zero = inits[dq.input[2]] if len(dq.input) > 2 else 0
                out[twins[n.name].input[i]] = (v - zero) * scale
    return out


def test_weights_only_is_the_float_model_with_the_dequantized_int8_weights():
    model, q = quantized()
    half = weights_only(q)
    ops = tiny.op_counts(half)
    assert "QuantizeLinear" not in ops and ops["DequantizeLinear"] == 4  # conv and head: w, b
    want = outputs(with_weights(model, dequantized_weights(q, model)))
    np.testing.assert_allclose(outputs(half), want, rtol=1e-4, atol=1e-4)
    # and it is not the float model: the weights' rounding is in it
    assert np.abs(outputs(half) - outputs(model)).max() > 1e-3


def test_activations_only_reads_the_float_weights_and_keeps_the_activation_pairs():
    model, q = quantized()
    half = activations_only(q, model)
    floats = {t.name: t for t in model.graph.initializer}
    for name in ("conv_w", "conv_b"):
        assert half.graph.initializer[[t.name for t in half.graph.initializer].index(
            f"{name}_float")].raw_data == floats[name].raw_data  # fmt: skip
    assert tiny.op_counts(half)["QuantizeLinear"] == tiny.op_counts(q)["QuantizeLinear"]
    # every int8 weight gone: only the activations' DequantizeLinear nodes are left
    assert tiny.op_counts(half)["DequantizeLinear"] == tiny.op_counts(q)["QuantizeLinear"]
    assert np.abs(outputs(half) - outputs(model)).max() > 1e-3


def test_undoing_both_halves_gives_the_float_model_back():
    model, q = quantized()
    np.testing.assert_allclose(
        outputs(weights_only(activations_only(q, model))), outputs(model), rtol=1e-5, atol=1e-5
    )


def test_a_quantized_node_without_a_float_twin_is_named():
    model, q = quantized()
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    next(n for n in renamed.graph.node if n.name == "conv").name = "other"
    with pytest.raises(ValueError, match=r"node 'conv' .*no node of that name"):
        activations_only(q, renamed)


def test_a_model_without_a_static_group_is_left_as_it_is():
    model = tiny.tiny_ctc()
    assert weights_only(model) == model
    assert activations_only(model, model) == model


def test_float_after_bypasses_only_the_activations_one_op_type_produces():
    _, q = quantized()
    kinds = activation_producers(q)
    assert kinds == ["Conv", "Gemm", "Reshape", GRAPH_INPUT]  # one tensor each: by name
    pairs = tiny.op_counts(q)["QuantizeLinear"]
    for kind in kinds:
        part = float_after(q, kind)
        assert tiny.op_counts(part)["QuantizeLinear"] == pairs - 1
        assert kind not in activation_producers(part)
        # what it bypasses is real: each kind's 8-bit rounding moves the outputs
        assert np.abs(outputs(part) - outputs(q)).max() > 1e-6
    # every kind bypassed in turn is weights_only
    every = q
    for kind in kinds:
        every = float_after(every, kind)
    np.testing.assert_allclose(outputs(every), outputs(weights_only(q)), rtol=1e-6, atol=1e-6)


def test_float_after_an_op_type_that_produces_no_quantized_activation_says_so():
    _, q = quantized()
    with pytest.raises(ValueError, match="produced by 'Sigmoid'"):
        float_after(q, "Sigmoid")
    assert activation_producers(weights_only(q)) == []
