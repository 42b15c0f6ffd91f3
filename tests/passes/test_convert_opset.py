import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper, version_converter

from stages import modelio, registry
from stages.build import pop_reports
from stages.errors import PassError
from stages.passes.convert_opset import ConvertOpsetOptions, convert_opset, default_opset
from stages.passes.fix_output_shape import FixOutputShapeOptions, fix_output_shape

CTX = registry.PassContext()
# exact: the converter rewrites signatures (attribute -> input), never arithmetic
RTOL, ATOL = 1e-5, 1e-6


def opset12(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny model at ddddocr's opset 12: Squeeze takes its axes as an attribute there."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    axes = next(t for t in out.graph.initializer if t.name == "sq_axes")
    squeeze = next(n for n in out.graph.node if n.op_type == "Squeeze")
    attr = helper.make_attribute("axes", numpy_helper.to_array(axes).tolist())
    del squeeze.input[1:]
    squeeze.attribute.append(attr)
    out.graph.initializer.remove(axes)
    out.opset_import[0].version = 12
    onnx.checker.check_model(out)
    return out


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for x in tiny.inputs(4, widths=(16, 24, 50)):
        np.testing.assert_allclose(tiny.run(a, x), tiny.run(b, x), rtol=RTOL, atol=ATOL)


def test_opset12_to_13_moves_squeeze_axes_to_an_input():
    model = opset12(tiny.tiny_ctc())  # its declared output [1, seqlen] is wrong, as ddddocr's
    before = model.SerializeToString()
    out = convert_opset(model, ConvertOpsetOptions(), CTX)
    onnx.checker.check_model(out)
    assert default_opset(out) == 13
    assert tiny.op_counts(out) == {**tiny.op_counts(model), "Constant": 1}
    squeeze = next(n for n in out.graph.node if n.op_type == "Squeeze")
    assert not squeeze.attribute and len(squeeze.input) == 2
    axes = next(n for n in out.graph.node if n.op_type == "Constant")
    assert axes.output[0] == squeeze.input[1]
    assert numpy_helper.to_array(axes.attribute[0].t).tolist() == [2]
    _assert_same_outputs(out, model)
    # the declared output is the input's (fixing it is fix_output_shape's job), metadata too
    assert out.graph.output[0] == model.graph.output[0]
    assert list(out.metadata_props) == list(model.metadata_props)
    assert modelio.spec(out) == modelio.spec(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("opset", [14, 17, 21])
def test_upgrade_keeps_every_node(opset):
    model = tiny.tiny_ctc(head="matmul", wrong_output_shape=False)
    out = convert_opset(model, ConvertOpsetOptions(opset=opset), CTX)
    onnx.checker.check_model(out, full_check=True)
    assert [(o.domain, o.version) for o in out.opset_import] == [("", opset)]
    assert tiny.op_counts(out) == tiny.op_counts(model)
    _assert_same_outputs(out, model)


def test_shapeless_output_stays_shapeless():
    # fix_output_shape rank 0 declares no shape on purpose; the converter's re-inferred
    # declaration must not replace it
    model = fix_output_shape(
        opset12(tiny.tiny_ctc()), FixOutputShapeOptions(rank=0, infer_shapes=False), CTX
    )
    out = convert_opset(model, ConvertOpsetOptions(), CTX)
    onnx.checker.check_model(modelio.checkable(out))
    assert not out.graph.output[0].type.tensor_type.HasField("shape")
    _assert_same_outputs(out, model)


def at_opset(opset: int) -> onnx.ModelProto:
    """The tiny model (opset 13) as an exporter writing `opset` would give it."""
    model = tiny.tiny_ctc(wrong_output_shape=False)
    out = model if opset == 13 else version_converter.convert_version(model, opset)
    assert default_opset(out) == opset
    return out


@pytest.mark.parametrize(
    ("model_opset", "target"), [(13, 13), (17, 13), (17, 17), (21, 14), (12, 7)]
)
def test_at_or_above_the_target_is_returned_unchanged_never_lowered(model_opset, target):
    model = opset12(tiny.tiny_ctc()) if model_opset == 12 else at_opset(model_opset)
    before = model.SerializeToString()
    out = convert_opset(model, ConvertOpsetOptions(opset=target), CTX)
    assert out is not model
    assert model.SerializeToString() == before
    popped, report = pop_reports(out)
    assert popped.SerializeToString() == before  # no node, opset or metadata touched
    assert default_opset(popped) == model_opset
    assert report == {
        "convert_opset": {
            "nothing_to_do": f"the model uses opset {model_opset} >= {target}: nothing to "
            "convert; never lowered"
        }
    }


def test_only_an_older_opset_converts():
    # the boundary the shipped low recipe relies on: 12 (ddddocr) -> 13 converts, 13 does not
    old = convert_opset(opset12(tiny.tiny_ctc()), ConvertOpsetOptions(opset=13), CTX)
    assert default_opset(old) == 13
    assert pop_reports(old)[1] == {}
    assert default_opset(convert_opset(at_opset(13), ConvertOpsetOptions(opset=14), CTX)) == 14


def test_unconvertible_opset_is_an_error_naming_the_pass():
    # an op onnx has no schema for cannot be carried to a newer opset
    model = opset12(tiny.tiny_ctc())
    model.graph.node.append(helper.make_node("Sharpen", ["input1"], ["sharpened"]))
    model.graph.output.append(helper.make_tensor_value_info("sharpened", TensorProto.FLOAT, None))
    with pytest.raises(
        PassError, match=r"cannot convert opset 12 -> 13 .*Sharpen.*choose another opset"
    ) as err:
        convert_opset(model, ConvertOpsetOptions(), CTX)
    assert err.value.pass_name == "convert_opset"
    assert str(err.value).startswith("pass 'convert_opset': ")


def test_options_are_checked():
    with pytest.raises(ValueError, match="opset"):
        ConvertOpsetOptions(opset=6)
    with pytest.raises(ValueError, match="opset"):
        ConvertOpsetOptions(opset=onnx.defs.onnx_opset_version() + 1)
    assert registry.get("convert_opset").exact is True
