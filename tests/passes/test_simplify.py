import importlib.resources

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from ocr_bundles_runtime.preprocess import Preprocess
from stages import modelio, registry
from stages.errors import PassError
from stages.passes import simplify as simplify_module
from stages.passes.fix_output_shape import FixOutputShapeOptions, fix_output_shape
from stages.passes.simplify import SimplifyOptions, simplify

CTX = registry.PassContext()
# exact rewrite: folding BN into Conv reorders float math, nothing more
RTOL, ATOL = 1e-4, 1e-5


def _with_redundancy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny model plus what exports typically leave behind: BN after Conv, an Identity, and
    a bias computed at run time from two initializers (a constant subgraph to fold)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    rng = np.random.default_rng(3)
    f32 = np.float32
    g.initializer.extend(
        [
            numpy_helper.from_array(rng.normal(1, 0.1, 8).astype(f32), "bn_s"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(f32), "bn_b"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(f32), "bn_m"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(f32), "bn_v"),
            numpy_helper.from_array(np.full(7, 0.5, f32), "half"),
        ]
    )
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv.output[0] = "c_raw"
    at = list(g.node).index(conv) + 1
    g.node.insert(
        at,
        helper.make_node("BatchNormalization", ["c_raw", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
    )
    g.node.insert(at + 1, helper.make_node("Identity", ["bn"], ["c"]))
    head = next(n for n in g.node if n.op_type == "Gemm")
    head.input[2] = "head_b2"
    g.node.insert(
        list(g.node).index(head), helper.make_node("Add", ["head_b", "half"], ["head_b2"])
    )
    onnx.checker.check_model(out)
    return out


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for x in tiny.inputs(widths=(16, 24, 32, 50)):
        np.testing.assert_allclose(tiny.run(a, x), tiny.run(b, x), rtol=RTOL, atol=ATOL)


def test_folds_bn_identity_and_constants_keeping_dynamic_width():
    model = _with_redundancy(tiny.tiny_ctc())
    before = model.SerializeToString()
    out = simplify(model, SimplifyOptions(), CTX)
    onnx.checker.check_model(out)
    counts = tiny.op_counts(out)
    assert counts == {
        "Conv": 1,
        "Sigmoid": 1,
        "Mul": 1,
        "Squeeze": 1,
        "Transpose": 2,
        "LSTM": 1,
        "Reshape": 2,
        "Gemm": 1,
    }
    # the check ran at width 160; the result still takes any width (50 is not a check width)
    assert out.graph.input[0].type.tensor_type.shape.dim[3].dim_param == "W"
    _assert_same_outputs(out, model)
    assert model.SerializeToString() == before
    assert list(out.metadata_props) == list(model.metadata_props)
    assert modelio.spec(out) == modelio.spec(model)


def test_skip_fuse_bn_and_no_optimization_keep_nodes():
    model = _with_redundancy(tiny.tiny_ctc())
    kept_bn = simplify(model, SimplifyOptions(skip_fuse_bn=True), CTX)
    assert tiny.op_counts(kept_bn)["BatchNormalization"] == 1
    assert "Identity" not in tiny.op_counts(kept_bn)
    # constant folding still runs without the optimizer; the fusions and eliminations don't
    folded_only = simplify(model, SimplifyOptions(perform_optimization=False), CTX)
    counts = tiny.op_counts(folded_only)
    assert (counts["BatchNormalization"], counts["Identity"], counts.get("Add", 0)) == (1, 1, 0)
    _assert_same_outputs(kept_bn, model)
    _assert_same_outputs(folded_only, model)


def test_check_n_zero_skips_the_shape_check():
    model = tiny.tiny_ctc(head="matmul")
    out = simplify(model, SimplifyOptions(check_n=0, check_width=1), CTX)
    assert tiny.op_counts(out) == tiny.op_counts(model)
    _assert_same_outputs(out, model)


def test_failed_check_is_an_error(monkeypatch):
    model = tiny.tiny_ctc()

    def diverging(m, **kwargs):
        print("Tensor logits changes after optimization. The max diff is 0.5.")
        return m, False

    monkeypatch.setattr(simplify_module.onnxsim, "simplify", diverging)
    with pytest.raises(PassError, match=r"max diff is 0\.5.*check_n: 0"):
        simplify(model, SimplifyOptions(), CTX)


def test_check_width_too_narrow_names_the_option():
    # the tiny Conv has a kernel 2 wide: a width-1 input cannot run
    with pytest.raises(PassError, match="check_width"):
        simplify(tiny.tiny_ctc(), SimplifyOptions(check_width=1), CTX)


def test_dynamic_channels_and_height_come_from_the_input_contract():
    model = tiny.tiny_ctc()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "C", "H"
    ctx = registry.PassContext(input=Preprocess(height=tiny.HEIGHT, channels=1))
    out = simplify(model, SimplifyOptions(), ctx)
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim] == [
        "",
        "C",
        "H",
        "W",
    ]
    assert tiny.op_counts(out) == tiny.op_counts(model)
    _assert_same_outputs(out, model)
    # the default contract's height (64) does not fit the tiny model: the check says so
    with pytest.raises(
        PassError, match=r"\[1, 1, 64, 160\].*change check_width, or the input height"
    ):
        simplify(model, SimplifyOptions(), CTX)


def test_dynamic_dim_the_contract_does_not_fix_cannot_be_checked():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "rank3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "F", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "F", "W"])],
    )
    with pytest.raises(PassError, match=r"axis 1 of 3.*check_n: 0"):
        simplify(helper.make_model(graph), SimplifyOptions(), CTX)


@pytest.mark.integration
def test_real_model_folds_shape_chains():
    path = importlib.resources.files("ddddocr") / "common.onnx"
    model = fix_output_shape(onnx.load(str(path)), FixOutputShapeOptions(), CTX)
    out = simplify(model, SimplifyOptions(), CTX)
    before, after = tiny.op_counts(model), tiny.op_counts(out)
    assert (len(model.graph.node), len(out.graph.node)) == (102, 63)
    assert (before["ConstantOfShape"], after.get("ConstantOfShape", 0)) == (2, 0)
    assert after.get("Constant", 0) == 0
    assert out.graph.input[0].type.tensor_type.shape.dim[3].dim_param == "image_width"
    rng = np.random.default_rng(0)
    for width in (100, 237):
        x = rng.random((1, 1, 64, width), dtype=np.float32)
        np.testing.assert_allclose(tiny.run(out, x), tiny.run(model, x), rtol=RTOL, atol=ATOL)
