import importlib.resources

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper

from stages import modelio, registry
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
    with pytest.raises(PassError, match=r"(?s)saved at level 'extended'.*choose a lower level"):
        ort_optimize(tiny.tiny_ctc(), OrtOptimizeOptions(), CTX)


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
