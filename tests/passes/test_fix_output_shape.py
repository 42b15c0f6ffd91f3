import numpy as np
import onnx
import pytest
import tiny

from stages import registry
from stages.errors import PassError
from stages.passes.fix_output_shape import FixOutputShapeOptions, fix_output_shape

CTX = registry.PassContext()


def test_declares_rank3_symbolic_and_keeps_outputs():
    model = tiny.tiny_ctc(wrong_output_shape=True)
    fixed = fix_output_shape(model, FixOutputShapeOptions(), CTX)
    onnx.checker.check_model(fixed, full_check=True)
    dims = fixed.graph.output[0].type.tensor_type.shape.dim
    assert len(dims) == 3
    assert tiny.op_counts(fixed) == tiny.op_counts(model)
    for x in tiny.inputs():
        np.testing.assert_allclose(tiny.run(fixed, x), tiny.run(model, x), rtol=1e-6, atol=0)


def test_rank0_clears_shape_and_input_model_untouched():
    model = tiny.tiny_ctc(wrong_output_shape=True)
    before = model.SerializeToString()
    fixed = fix_output_shape(model, FixOutputShapeOptions(rank=0, infer_shapes=False), CTX)
    assert not fixed.graph.output[0].type.tensor_type.HasField("shape")
    assert model.SerializeToString() == before


def test_unknown_output_is_an_error_naming_outputs():
    with pytest.raises(PassError, match=r"\['nope'\].*\['logits'\]"):
        fix_output_shape(tiny.tiny_ctc(), FixOutputShapeOptions(outputs=["nope"]), CTX)
