import numpy as np
import onnx
import onnxruntime as ort
import tiny
from onnx import helper

from ocr_bundles_runtime.session import Runtime
from stages import registry
from stages.build import pop_reports
from stages.passes.fuse_silu import FuseSiluOptions, fuse_silu
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static

CTX = registry.PassContext(calibration=tiny.inputs(8))
OPTIONS = FuseSiluOptions()


def _assert_identical(a: onnx.ModelProto, b: onnx.ModelProto, rt: Runtime | None = None) -> None:
    """Bit for bit: QuickGelu runs the same logistic and product as Sigmoid and Mul on every
    CPU, so no tolerance is needed (nor would one be right: an int8 model after it would
    requantize any difference)."""
    for x in tiny.inputs(6, seed=5):
        np.testing.assert_array_equal(tiny.run(a, x, rt), tiny.run(b, x, rt))


def test_fuses_the_float_silu_into_one_quick_gelu_with_the_same_outputs():
    model = tiny.tiny_ctc()
    before = model.SerializeToString()
    out = fuse_silu(model, OPTIONS, CTX)
    onnx.checker.check_model(out)
    ops = tiny.op_counts(out)
    assert ops["QuickGelu"] == 1 and "Sigmoid" not in ops and "Mul" not in ops
    gelu = next(n for n in out.graph.node if n.op_type == "QuickGelu")
    assert gelu.domain == "com.microsoft" and list(gelu.input) == ["c"]
    assert list(gelu.output) == ["c_silu"]
    assert helper.get_attribute_value(gelu.attribute[0]) == 1.0
    assert [o.version for o in out.opset_import if o.domain == "com.microsoft"] == [1]
    assert model.SerializeToString() == before
    _assert_identical(model, out)


def test_fuses_the_silu_of_a_static_int8_model_where_onnxruntime_does_not(tmp_path):
    model = quantize_static(tiny.tiny_ctc(), QuantizeStaticOptions(), CTX)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    sig = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    assert producer[sig.input[0]] == "DequantizeLinear"  # the QDQ pattern onnxruntime skips
    out = fuse_silu(model, OPTIONS, CTX)
    assert tiny.op_counts(out)["QuickGelu"] == 1 and "Sigmoid" not in tiny.op_counts(out)
    for rt in (Runtime(), Runtime(int8_kernels="fast")):
        _assert_identical(model, out, rt)
    # onnxruntime's own optimizer leaves the int8 model's SiLU as Sigmoid and Mul
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = tiny.op_counts(onnx.load(so.optimized_model_filepath))
    assert optimized.get("Sigmoid") == 1 and "QuickGelu" not in optimized


def _variant(edit) -> onnx.ModelProto:
    model = tiny.tiny_ctc()
    edit(model.graph)
    onnx.checker.check_model(model)
    return model


def _sigmoid_of_another_tensor(g: onnx.GraphProto) -> None:
    sig = next(n for n in g.node if n.op_type == "Sigmoid")
    g.node.insert(0, helper.make_node("Neg", ["input1"], ["neg"], name="neg"))
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv2 = helper.make_node("Conv", ["neg", *conv.input[1:]], ["c2"], name="conv2")
    for a in conv.attribute:
        conv2.attribute.append(a)
    g.node.insert(2, conv2)
    sig.input[0] = "c2"


def _sigmoid_read_twice(g: onnx.GraphProto) -> None:
    g.node.append(helper.make_node("Identity", ["c_sig"], ["sig_copy"], name="copy"))
    g.output.append(helper.make_tensor_value_info("sig_copy", onnx.TensorProto.FLOAT, [None] * 4))


def test_leaves_a_product_that_is_not_silu_and_records_why():
    for edit in (_sigmoid_of_another_tensor, _sigmoid_read_twice):
        model = _variant(edit)
        before = model.SerializeToString()
        out = fuse_silu(model, OPTIONS, CTX)
        popped, report = pop_reports(out)
        assert popped.SerializeToString() == before, edit.__name__
        assert "Sigmoid" in report["fuse_silu"]["nothing_to_do"]


def test_only_after_dequantize_leaves_the_float_silu_to_onnxruntime():
    after = FuseSiluOptions(only_after_dequantize=True)
    model = tiny.tiny_ctc()
    popped, report = pop_reports(fuse_silu(model, after, CTX))
    assert popped.SerializeToString() == model.SerializeToString()
    assert "reading a DequantizeLinear" in report["fuse_silu"]["nothing_to_do"]
    q = quantize_static(model, QuantizeStaticOptions(), CTX)
    assert tiny.op_counts(fuse_silu(q, after, CTX))["QuickGelu"] == 1


def test_is_registered_as_an_exact_fusion():
    spec = registry.get("fuse_silu")
    assert spec.kind == "fuse" and spec.exact and spec.options is FuseSiluOptions
