"""_scale_search: activation scales fine-tuned by output error, and quantize_to_tolerance's
scale_search_images. Every figure here runs on onnxruntime's exact int8 kernels (the default
Runtime) or float, so it holds on AVX2 and on VNNI machines alike."""

import numpy as np
import onnx
import pydantic
import pytest
import tiny
from onnx import numpy_helper

from ocr_bundles_runtime.session import Runtime
from stages import registry
from stages.passes import _scale_search as ss
from stages.passes import quantize_to_tolerance as qtt
from stages.passes._ort_quant import rel_mse
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static

CTX = registry.PassContext(calibration=tiny.inputs(8))
XS = tiny.inputs(8, seed=7)
RT = Runtime()


def quantized() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = tiny.tiny_ctc()
    return model, quantize_static(model, QuantizeStaticOptions(op_types=["Conv"]), CTX)


def reference(model: onnx.ModelProto) -> list[np.ndarray]:
    return [tiny.run(model, x).astype(np.float64) for x in XS]


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def conv_bias(model: onnx.ModelProto) -> tuple[str, str]:
    """The conv's int32 bias initializer and its scale's."""
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = producer[conv.input[2]]
    return dq.input[0], dq.input[1]


def test_a_factor_scales_the_pair_and_requantizes_the_bias_it_feeds():
    _, q = quantized()
    image = q.graph.input[0].name
    scale = ss.activation_scales(q)[image]
    out = ss.with_factors(q, {image: 2.0})
    before, after = arrays(q), arrays(out)
    assert after[scale] == pytest.approx(2.0 * before[scale], rel=1e-7)
    bq, bs = conv_bias(q)
    # the bias scale is input scale x weight scale: it doubles, and the int32 values halve so
    # that the float bias stays within half a new step of what it was
    assert np.allclose(after[bs], 2.0 * before[bs], rtol=1e-7)
    old, new = before[bq] * before[bs], after[bq] * after[bs]
    assert np.all(np.abs(new - old) <= after[bs] / 2 + 1e-9)
    assert not np.array_equal(after[bq], before[bq])
    # nothing else moves, and factor 1 is the model itself
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert moved == {scale, bq, bs}
    assert ss.with_factors(q, {}).SerializeToString() == q.SerializeToString()


def test_the_search_restores_a_spoiled_range():
    """An input range 4x too wide loses two bits of the image; the search's 0.25 gives them
    back and the output error falls with it."""
    model, q = quantized()
    image = q.graph.input[0].name
    spoiled = ss.with_factors(q, {image: 4.0})
    ref = reference(model)
    tuned, found = ss.search(spoiled, XS, ref, RT, [0.25, 0.5, 2.0])
    assert found.factors.get(image) == 0.25
    assert found.rel_mse_after < 0.8 * found.rel_mse_before  # measured: 0.67x
    assert rel_mse(tuned, XS, ref, RT) == found.rel_mse_after
    assert found.rel_mse_before == rel_mse(spoiled, XS, ref, RT)


def test_the_search_keeps_a_factor_only_when_the_error_drops():
    model, q = quantized()
    ref = reference(model)
    tuned, found = ss.search(q, XS, ref, RT, [0.5, 0.8, 1.25, 2.0])
    assert found.rel_mse_after <= found.rel_mse_before
    assert all(f != 1.0 for f in found.factors.values())
    if not found.factors:
        assert tuned.SerializeToString() == q.SerializeToString()


def test_quantize_to_tolerance_tunes_what_it_judges_and_reports_it():
    plain, tuned = tiny.tolerance_pair(scale_search_images=8, scale_search_grid=[0.5, 2.0])
    assert "scale_search" not in tiny.tolerance_report(plain)  # off: report and bytes as before
    found = tiny.tolerance_report(tuned)["scale_search"]
    assert found["rel_mse_after"] <= found["rel_mse_before"]
    want = ss.with_factors(plain, found["factors"])
    assert arrays(tuned).keys() == arrays(want).keys()
    assert all(np.array_equal(arrays(tuned)[n], v) for n, v in arrays(want).items())


def test_a_factor_below_zero_is_refused_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="scale_search_grid"):
        qtt.QuantizeToToleranceOptions(scale_search_grid=[0.5, -1.0])
