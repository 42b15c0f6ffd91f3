import importlib.resources

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper, numpy_helper

from stages import modelio, registry
from stages.build import pop_reports
from stages.errors import PassError
from stages.passes import ort_optimize as ort_optimize_module
from stages.passes.ort_optimize import OrtOptimizeOptions, ort_optimize

CTX = registry.PassContext(calibration=tiny.inputs(2))
# exact rewrites: onnxruntime's fusions only reorder float math
RTOL, ATOL = 1e-4, 1e-5
COMMON = {"Squeeze": 1, "Transpose": 2, "LSTM": 1, "Reshape": 2, "Gemm": 1}


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for x in tiny.inputs(widths=(16, 24, 32, 50)):
        np.testing.assert_allclose(tiny.run(a, x), tiny.run(b, x), rtol=RTOL, atol=ATOL)


def _domains(model: onnx.ModelProto) -> dict[str, str]:
    return {n.op_type: n.domain for n in model.graph.node}


def test_basic_fuses_matmul_add_into_gemm_with_standard_ops():
    model = tiny.tiny_ctc(head="matmul")
    out = ort_optimize(model, OrtOptimizeOptions(level="basic"), CTX)
    onnx.checker.check_model(out)
    assert tiny.op_counts(out) == {"Conv": 1, "Sigmoid": 1, "Mul": 1, **COMMON}
    assert set(_domains(out).values()) == {""}
    _assert_same_outputs(out, model)


def test_extended_fuses_silu_into_quickgelu_and_keeps_metadata():
    model = tiny.tiny_ctc(head="matmul")
    before = model.SerializeToString()
    out = ort_optimize(model, OrtOptimizeOptions(), CTX)
    onnx.checker.check_model(out)
    assert tiny.op_counts(out) == {"Conv": 1, "QuickGelu": 1, **COMMON}
    assert _domains(out)["QuickGelu"] == "com.microsoft"
    # onnxruntime declares nine domains; only the used ones stay
    assert sorted(o.domain for o in out.opset_import) == ["", "com.microsoft"]
    _assert_same_outputs(out, model)
    assert list(out.metadata_props) == list(model.metadata_props)
    assert modelio.spec(out) == modelio.spec(model)
    assert model.SerializeToString() == before


def test_all_writes_nchwc_layout_ops():
    model = tiny.tiny_ctc()
    out = ort_optimize(model, OrtOptimizeOptions(level="all"), CTX)
    onnx.checker.check_model(out)
    assert tiny.op_counts(out) == {"Conv": 1, "QuickGelu": 1, "ReorderOutput": 1, **COMMON}
    assert _domains(out)["Conv"] == _domains(out)["ReorderOutput"] == "com.microsoft.nchwc"
    _assert_same_outputs(out, model)


def test_unloadable_model_is_an_error():
    model = tiny.tiny_ctc()
    model.graph.node.append(helper.make_node("NoSuchOp", ["logits"], ["extra"]))
    with pytest.raises(PassError, match=r"ort_optimize.*cannot load"):
        ort_optimize(model, OrtOptimizeOptions(), CTX)


def test_calibration_image_the_input_rejects_is_not_blamed_on_the_level():
    # width 1 is narrower than the Conv kernel: the input model cannot run it either
    ctx = registry.PassContext(calibration=[np.zeros((1, 1, tiny.HEIGHT, 1), np.float32)])
    with pytest.raises(PassError, match="input model fails on the first calibration image"):
        ort_optimize(tiny.tiny_ctc(), OrtOptimizeOptions(), ctx)


def test_saved_model_that_does_not_load_names_the_level(monkeypatch):
    def lose_contrib_domain(out: onnx.ModelProto, original: onnx.ModelProto) -> None:
        kept = [o for o in out.opset_import if o.domain == ""]
        del out.opset_import[:]
        out.opset_import.extend(kept)

    # stands in for onnxruntime writing a model it cannot read back
    monkeypatch.setattr(ort_optimize_module, "_drop_unused_domains", lose_contrib_domain)
    with pytest.raises(PassError, match=r"(?s)at 'extended'.*choose a lower level"):
        ort_optimize(tiny.tiny_ctc(), OrtOptimizeOptions(step_down=False), CTX)
    # stepping down: 'basic' writes no contrib op, so losing the domain costs nothing there
    out, report = pop_reports(ort_optimize(tiny.tiny_ctc(), OrtOptimizeOptions(), CTX))
    assert report["ort_optimize"]["level"] == "basic"
    assert list(report["ort_optimize"]["failed"]) == ["extended"]
    assert not [n for n in out.graph.node if n.domain == "com.microsoft"]


def layer_norm_model(opset: int) -> onnx.ModelProto:
    """x [1, 4, 8] -> the exported LayerNorm pattern (ReduceMean, Sub, Pow, ..., Add) -> y."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(rng.normal(1, 0.1, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "ln",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_fusion_the_model_s_opset_lacks_steps_down_and_says_why():
    # onnxruntime fuses the pattern into LayerNormalization, an op of opset 17: in an
    # opset-12 model (PP-OCRv4's export) the saved graph fails the checker
    x = np.random.default_rng(1).normal(size=(1, 4, 8)).astype(np.float32)
    ctx = registry.PassContext(calibration=[x])
    out, report = pop_reports(ort_optimize(layer_norm_model(12), OrtOptimizeOptions(), ctx))
    assert report["ort_optimize"]["level"] == "basic"
    assert "LayerNormalization" in report["ort_optimize"]["failed"]["extended"]
    np.testing.assert_allclose(tiny.run(out, x), tiny.run(layer_norm_model(12), x), atol=1e-5)
    # at opset 17 the fused op is standard: extended holds, nothing recorded
    out, report = pop_reports(ort_optimize(layer_norm_model(17), OrtOptimizeOptions(), ctx))
    assert report == {} and "LayerNormalization" in tiny.op_counts(out)


def test_level_is_validated():
    with pytest.raises(ValueError, match="level"):
        OrtOptimizeOptions(level="max")


@pytest.mark.integration
def test_real_model_gets_eleven_quickgelu():
    model = onnx.load(str(importlib.resources.files("ddddocr") / "common.onnx"))
    x = np.random.default_rng(0).random((1, 1, 64, 160), dtype=np.float32)
    out = ort_optimize(model, OrtOptimizeOptions(), registry.PassContext(calibration=[x]))
    counts = tiny.op_counts(out)
    assert (counts["QuickGelu"], counts.get("Sigmoid", 0), counts["Mul"]) == (11, 0, 1)
    np.testing.assert_allclose(tiny.run(out, x), tiny.run(model, x), rtol=RTOL, atol=ATOL)
