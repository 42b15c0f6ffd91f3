import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from stages import modelio, registry
from stages.build import pop_reports, run_passes
from stages.passes.fix_output_shape import FixOutputShapeOptions
from stages.passes.lift_constants import LiftConstantsOptions, lift_constants
from stages.recipe import PassStep, Recipe

CTX = registry.PassContext()
# exact: the tensors move from nodes to initializers, the values are the same bytes
RTOL, ATOL = 1e-5, 1e-6
HELD = ["lstm_w", "head_w", "head_b", "sq_axes"]  # sq_axes: a 1-element int64 tensor


def _as_constants(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """`model` with initializers `names` held by Constant nodes (as Paddle2ONNX writes weights),
    and the LSTM's flatten target as a `value_ints` Constant, which is not a tensor to lift."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for tensor in [t for t in graph.initializer if t.name in names]:
        graph.initializer.remove(tensor)
        graph.node.insert(
            0,
            helper.make_node(
                "Constant", [], [tensor.name], name=f"const_{tensor.name}", value=tensor
            ),
        )
    flat = next(t for t in graph.initializer if t.name == "flat_shape")
    graph.initializer.remove(flat)
    ints = numpy_helper.to_array(flat).tolist()
    graph.node.insert(0, helper.make_node("Constant", [], ["flat_shape"], value_ints=ints))
    onnx.checker.check_model(out)
    return out


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for x in tiny.inputs(3):
        np.testing.assert_allclose(tiny.run(a, x), tiny.run(b, x), rtol=RTOL, atol=ATOL)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_nothing_to_do(model: onnx.ModelProto, options: LiftConstantsOptions) -> str:
    """The pass returns a copy that is the input byte for byte once the build pops its report;
    returns the recorded reason."""
    before = model.SerializeToString()
    out = lift_constants(model, options, CTX)
    assert out is not model
    assert model.SerializeToString() == before
    assert out.SerializeToString() != before  # the report rides on the copy until popped
    popped, report = pop_reports(out)
    assert popped.SerializeToString() == before
    assert list(report) == ["lift_constants"]
    assert list(report["lift_constants"]) == ["nothing_to_do"]
    return report["lift_constants"]["nothing_to_do"]


def test_lifts_every_tensor_constant_and_keeps_value_ints():
    reference = tiny.tiny_ctc(wrong_output_shape=False)
    model = _as_constants(reference, HELD)
    before = model.SerializeToString()
    assert tiny.op_counts(model)["Constant"] == 5
    out = lift_constants(model, LiftConstantsOptions(), CTX)
    onnx.checker.check_model(out, full_check=True)
    assert tiny.op_counts(out) == {**tiny.op_counts(reference), "Constant": 1}
    kept = next(n for n in out.graph.node if n.op_type == "Constant")
    assert kept.output[0] == "flat_shape"
    inits, original = _inits(out), _inits(reference)
    for name in HELD:
        assert inits[name].dtype == original[name].dtype
        assert np.array_equal(inits[name], original[name]), name
    assert modelio.constant_weights(out) == []
    _assert_same_outputs(out, model)
    _assert_same_outputs(out, reference)
    assert list(out.metadata_props) == list(model.metadata_props)
    assert model.SerializeToString() == before


def test_min_elements_keeps_small_constants_as_nodes():
    model = _as_constants(tiny.tiny_ctc(), HELD)
    out = lift_constants(model, LiftConstantsOptions(min_elements=2), CTX)
    onnx.checker.check_model(modelio.checkable(out))
    constants = sorted(n.output[0] for n in out.graph.node if n.op_type == "Constant")
    assert constants == ["flat_shape", "sq_axes"]
    assert {"lstm_w", "head_w", "head_b"} <= set(_inits(out))
    _assert_same_outputs(out, model)


def test_constant_that_is_a_graph_output_stays_a_node():
    model = _as_constants(tiny.tiny_ctc(wrong_output_shape=False), ["head_b"])
    model.graph.output.append(helper.make_tensor_value_info("head_b", TensorProto.FLOAT, [7]))
    # head_b is read by the Gemm and is an output: a node output, it cannot be an initializer
    reason = _assert_nothing_to_do(model, LiftConstantsOptions())
    assert reason.startswith("no tensor-valued Constant node with >= 1 elements")
    assert tiny.op_counts(model)["Constant"] == 2


def test_old_ir_lists_lifted_initializers_as_inputs():
    # IR 3 requires every initializer to be a graph input as well
    model = _as_constants(tiny.tiny_ctc(wrong_output_shape=False), ["head_w"])
    model.ir_version = 3
    graph = model.graph
    for tensor in graph.initializer:
        graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    onnx.checker.check_model(model)
    out = lift_constants(model, LiftConstantsOptions(), CTX)
    onnx.checker.check_model(out)
    declared = next(v for v in out.graph.input if v.name == "head_w")
    assert [d.dim_value for d in declared.type.tensor_type.shape.dim] == [7, 12]
    assert modelio.input_value(out).name == "input1"
    assert tiny.op_counts(out) == {**tiny.op_counts(tiny.tiny_ctc()), "Constant": 1}


@pytest.mark.parametrize(
    ("held", "options", "minimum"),
    [
        ([], LiftConstantsOptions(), 1),
        (HELD, LiftConstantsOptions(min_elements=10**6), 1000000),
    ],
    ids=["no_constant", "all_too_small"],
)
def test_nothing_to_lift_returns_the_input_recorded(held, options, minimum):
    model = _as_constants(tiny.tiny_ctc(), held) if held else tiny.tiny_ctc()
    assert _assert_nothing_to_do(model, options) == (
        f"no tensor-valued Constant node with >= {minimum} elements: weights are already "
        "initializers"
    )


def test_floats_only_lifts_weights_and_keeps_integer_constants():
    # the shipped recipes' setting: float weights move whatever their size (head_b: 7 elements,
    # as a small head's bias), the int64 Squeeze axes stays a node, as ddddocr's shape values do
    model = _as_constants(tiny.tiny_ctc(), HELD)
    out = lift_constants(model, LiftConstantsOptions(floats_only=True), CTX)
    constants = sorted(n.output[0] for n in out.graph.node if n.op_type == "Constant")
    assert constants == ["flat_shape", "sq_axes"]
    assert {"lstm_w", "head_w", "head_b"} <= set(_inits(out))
    assert modelio.constant_weights(out) == []  # nothing left the quantizers would refuse
    assert pop_reports(out)[1] == {}  # it did something: no report
    _assert_same_outputs(out, model)


def test_floats_only_on_integer_constants_alone_is_nothing_to_do():
    # ddddocr's export: weights are initializers, its Constants int64 indices and shapes
    model = _as_constants(tiny.tiny_ctc(), ["sq_axes", "out_shape"])
    assert _assert_nothing_to_do(model, LiftConstantsOptions(floats_only=True)) == (
        "no float tensor-valued Constant node with >= 1 elements: weights are already initializers"
    )


def test_build_notes_and_records_a_pass_that_did_nothing(capsys):
    model = tiny.tiny_ctc()
    recipe = Recipe(
        description="test",
        passes=[
            PassStep("fix_output_shape", FixOutputShapeOptions()),
            PassStep("lift_constants", LiftConstantsOptions()),
        ],
    )
    results = run_passes(model, recipe, registry.PassContext(calibration=tiny.inputs(4)))
    reason = "no tensor-valued Constant node with >= 1 elements: weights are already initializers"
    assert results[1].report == {"lift_constants": {"nothing_to_do": reason}}
    assert results[0].report == {}
    # the stage model is its input's bytes: the report went to the record, not the model
    assert results[1].model.SerializeToString() == results[0].model.SerializeToString()
    lines = capsys.readouterr().out.splitlines()
    assert f"build: pass 2/2 lift_constants did nothing: {reason}" in lines
    assert not any("fix_output_shape did nothing" in line for line in lines)


def test_options_are_checked():
    with pytest.raises(ValueError, match="min_elements"):
        LiftConstantsOptions(min_elements=0)
    assert registry.get("lift_constants").exact is True
