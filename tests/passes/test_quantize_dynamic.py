import importlib.resources

import numpy as np
import onnx
import pytest
import tiny
from onnx import numpy_helper

from stages import modelio, registry
from stages.errors import PassError
from stages.passes.quantize_dynamic import QuantizeDynamicOptions, quantize_dynamic

CTX = registry.PassContext(calibration=tiny.inputs(2))
# Quantization tolerance on the tiny model (logits up to ~2.3): measured max abs error 0.035-0.065
# and frame argmax agreement 0.98-1.0 over these inputs, so these bounds leave ~1.5x headroom.
MAX_ABS = 0.1
MIN_AGREE = 0.9


def assert_close(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    tiny.assert_quantized_close(model, out, MAX_ABS, MIN_AGREE)


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_default_quantizes_lstm_and_head_but_not_conv(head):
    model = tiny.tiny_ctc(head=head)
    before = model.SerializeToString()
    out = quantize_dynamic(model, QuantizeDynamicOptions(), CTX)
    onnx.checker.check_model(out)
    ops = tiny.op_counts(out)
    assert ops["DynamicQuantizeLSTM"] == 1 and "LSTM" not in ops
    assert ops["MatMulInteger"] == 1 and ops["DynamicQuantizeLinear"] == 1
    assert "Gemm" not in ops and "MatMul" not in ops
    assert ops["Conv"] == 1 and "ConvInteger" not in ops
    assert_close(model, out)
    assert modelio.spec(out) == modelio.spec(model)
    assert model.SerializeToString() == before


def test_conv_in_op_types_gives_conv_integer():
    model = tiny.tiny_ctc()
    options = QuantizeDynamicOptions(op_types=["Conv", "MatMul", "Gemm", "LSTM"])
    out = quantize_dynamic(model, options, CTX)
    ops = tiny.op_counts(out)
    assert ops["ConvInteger"] == 1 and "Conv" not in ops
    assert ops["DynamicQuantizeLinear"] == 2  # the Conv input and the head input
    assert_close(model, out)


@pytest.mark.parametrize(
    "options",
    [
        QuantizeDynamicOptions(per_channel=True),
        QuantizeDynamicOptions(reduce_range=True),
        QuantizeDynamicOptions(weight_type="uint8"),
    ],
    ids=["per_channel", "reduce_range", "uint8"],
)
def test_weight_options_load_and_stay_close(options):
    model = tiny.tiny_ctc()
    out = quantize_dynamic(model, options, CTX)
    assert tiny.op_counts(out)["DynamicQuantizeLSTM"] == 1
    assert_close(model, out)


def _quantized(out: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per weight ('lstm_w', 'lstm_r', 'head'): the stored quantized tensor and its scale, as
    the DynamicQuantizeLSTM and the MatMulInteger -> Mul chain read them."""
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    lstm = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLSTM")
    matmul = next(n for n in out.graph.node if n.op_type == "MatMulInteger")
    # the MatMul's weight scale multiplies the activation scale (DynamicQuantizeLinear's
    # second output) in a Mul; its other input is the weight scale
    dql = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLinear")
    scale_mul = next(n for n in out.graph.node if n.op_type == "Mul" and dql.output[1] in n.input)
    weight_scale = next(i for i in scale_mul.input if i != dql.output[1])
    return {
        "lstm_w": (inits[lstm.input[1]], inits[lstm.input[8]]),
        "lstm_r": (inits[lstm.input[2]], inits[lstm.input[10]]),
        "head": (inits[matmul.input[1]], inits[weight_scale]),
    }


def test_default_weights_are_per_tensor_int8_using_eight_bits():
    weights = _quantized(quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(), CTX))
    # per tensor: one scale per LSTM direction (its own per-tensor unit), a scalar for the head
    assert {k: (w.dtype, s.shape) for k, (w, s) in weights.items()} == {
        "lstm_w": (np.int8, (2,)),
        "lstm_r": (np.int8, (2,)),
        "head": (np.int8, ()),
    }
    assert max(np.abs(w.astype(int)).max() for w, _ in weights.values()) == 127


def test_per_channel_gives_one_scale_per_output_channel():
    weights = _quantized(
        quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(per_channel=True), CTX)
    )
    head_w, head_scale = weights["head"]
    assert head_w.shape == (12, 7) and head_scale.shape == (7,)  # [K, C]: one per class
    assert len(set(head_scale.tolist())) == 7
    # LSTM: one scale per direction and gate row (4 * hidden)
    assert weights["lstm_w"][1].shape == weights["lstm_r"][1].shape == (2, 24)


def test_weight_type_sets_the_head_weight_dtype():
    weights = _quantized(
        quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(weight_type="uint8"), CTX)
    )
    assert weights["head"][0].dtype == np.uint8
    # onnxruntime's DynamicQuantizeLSTM only takes int8 weights, whatever weight_type says
    assert weights["lstm_w"][0].dtype == weights["lstm_r"][0].dtype == np.int8


def test_reduce_range_keeps_weights_in_seven_bits():
    weights = _quantized(
        quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(reduce_range=True), CTX)
    )
    for name, (w, _) in weights.items():
        assert w.dtype == np.int8, name
        assert w.min() >= -64 and w.max() <= 63, name
    assert max(np.abs(w.astype(int)).max() for w, _ in weights.values()) == 64


def test_gemm_and_matmul_are_selected_separately():
    # onnxruntime quantizes a Gemm as a MatMul; asking for LSTM only must leave the head float
    model = tiny.tiny_ctc(head="gemm")
    out = quantize_dynamic(model, QuantizeDynamicOptions(op_types=["LSTM"]), CTX)
    ops = tiny.op_counts(out)
    assert ops["DynamicQuantizeLSTM"] == 1 and "MatMulInteger" not in ops
    out = quantize_dynamic(model, QuantizeDynamicOptions(op_types=["Gemm"]), CTX)
    ops = tiny.op_counts(out)
    assert ops["MatMulInteger"] == 1 and ops["LSTM"] == 1


def test_node_lists_select_by_original_name():
    model = tiny.tiny_ctc(head="gemm")
    out = quantize_dynamic(model, QuantizeDynamicOptions(nodes_to_exclude=["head"]), CTX)
    assert "MatMulInteger" not in tiny.op_counts(out)
    out = quantize_dynamic(model, QuantizeDynamicOptions(nodes_to_quantize=["head"]), CTX)
    ops = tiny.op_counts(out)
    assert ops["MatMulInteger"] == 1 and ops["LSTM"] == 1


def test_already_quantized_model_is_refused():
    quantized = quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(), CTX)
    with pytest.raises(PassError, match=r"already quantized.*DynamicQuantizeLSTM"):
        quantize_dynamic(quantized, QuantizeDynamicOptions(), CTX)


def test_no_matching_op_names_op_types_and_present_ops():
    with pytest.raises(PassError, match=r"op_types \['MatMul'\].*\['Conv', 'Gemm', 'LSTM'"):
        quantize_dynamic(
            tiny.tiny_ctc(head="gemm"), QuantizeDynamicOptions(op_types=["MatMul"]), CTX
        )
    with pytest.raises(PassError, match=r"op_types \['GRU'\]"):
        quantize_dynamic(tiny.tiny_ctc(), QuantizeDynamicOptions(op_types=["GRU"]), CTX)


def test_everything_excluded_is_no_match():
    options = QuantizeDynamicOptions(nodes_to_exclude=["lstm", "head"])
    with pytest.raises(PassError, match="no node to quantize"):
        quantize_dynamic(tiny.tiny_ctc(), options, CTX)


def test_unknown_node_name_is_an_error_naming_the_option():
    options = QuantizeDynamicOptions(nodes_to_exclude=["nope"])
    with pytest.raises(PassError, match=r"nodes_to_exclude: nodes \['nope'\]"):
        quantize_dynamic(tiny.tiny_ctc(), options, CTX)


def test_options_are_typed():
    with pytest.raises(ValueError, match="op_types"):
        QuantizeDynamicOptions(op_types=["Softmax"])
    with pytest.raises(ValueError, match="extra"):
        QuantizeDynamicOptions(weights="int8")


@pytest.mark.integration
def test_real_model_quantizes_and_old_quantized_model_is_refused():
    pkg = importlib.resources.files("ddddocr")
    with pytest.raises(PassError, match="already quantized"):
        quantize_dynamic(onnx.load(str(pkg / "common_old.onnx")), QuantizeDynamicOptions(), CTX)
    model = onnx.load(str(pkg / "common.onnx"))
    out = quantize_dynamic(model, QuantizeDynamicOptions(), registry.PassContext())
    ops = tiny.op_counts(out)
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["MatMulInteger"] == 1
    assert ops["Conv"] == 21 and "ConvInteger" not in ops
    assert out.ByteSize() < model.ByteSize() / 3  # 54 MB -> ~16 MB: the LSTM and head dominate
    x = np.random.default_rng(0).random((1, 1, 64, 160), dtype=np.float32)
    ref, got = tiny.run(model, x), tiny.run(out, x)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9


def test_nodes_onnxruntime_cannot_quantize_are_an_error():
    # onnxruntime only rewrites Gemm(alpha=1, beta=1, transA=0) into a quantizable MatMul
    model = tiny.tiny_ctc(head="gemm")
    head = next(n for n in model.graph.node if n.op_type == "Gemm")
    head.attribute.append(onnx.helper.make_attribute("alpha", 0.5))
    with pytest.raises(PassError, match=r"left every node selected by op_types \['Gemm'\]"):
        quantize_dynamic(model, QuantizeDynamicOptions(op_types=["Gemm"]), CTX)
