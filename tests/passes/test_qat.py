"""_qat: quantization-aware fine-tuning of a static QDQ model against its float model, and
quantize_to_tolerance's qat_images. The fine-tune runs in float64 and every figure compared
here runs on onnxruntime's exact int8 kernels (the default Runtime) or float, so the
tolerances hold on AVX2 and on VNNI machines alike."""

from types import SimpleNamespace

import numpy as np
import onnx
import pydantic
import pytest
import tiny
from onnx import helper, numpy_helper

from ocr_bundles_runtime.session import Runtime
from stages import registry
from stages.errors import PassError
from stages.passes import _qat
from stages.passes import _scale_search as ss
from stages.passes import quantize_to_tolerance as qtt
from stages.passes._ort_quant import rel_mse
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static
from stages.records import QatRecord

torch = pytest.importorskip("torch")  # a pinned dependency: installed by `make install`

CTX = registry.PassContext(calibration=tiny.inputs(16))
XS = tiny.inputs(16)
HELD = tiny.inputs(8, seed=7)
RT = Runtime()


def quantized() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = tiny.tiny_ctc()
    return model, quantize_static(model, QuantizeStaticOptions(op_types=["Conv"]), CTX)


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def teacher(model: onnx.ModelProto) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The float model's outputs on XS and HELD, as finetune takes them."""
    return [tiny.run(model, x) for x in XS], [tiny.run(model, x) for x in HELD]


def options(**kw) -> SimpleNamespace:
    base = {"qat_epochs": 1, "qat_batch": 4, "qat_lr_weights": 1e-6, "qat_lr_scales": 2e-4}
    return SimpleNamespace(**(base | kw))


def test_the_torch_graph_computes_what_onnxruntime_computes():
    """Fake quantization in float64 against onnxruntime's int8 kernels: the same numbers up to
    a rounding step here and there (measured: 2e-14 of the output's energy)."""
    model, q = quantized()
    graph = _qat._Graph(q, model, probs=False)
    for x in HELD:
        want = tiny.run(q, x).astype(np.float64)
        with torch.no_grad():
            got = graph.outputs([torch.tensor(x, dtype=torch.float64)])[0].numpy()
        assert got.shape == want.shape
        assert np.sum((got - want) ** 2) <= 1e-3 * np.sum(want**2)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_takes_along_any_axis_and_counts_negative_indices_from_the_end(axis):
    data = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    idx = np.array([[0, -1], [1, 0]], np.int64)
    node = helper.make_node("Gather", ["data", "idx"], ["out"], axis=axis)
    interpreter = SimpleNamespace(torch=torch)
    got = _qat._Graph._op(interpreter, node, [torch.tensor(data), torch.tensor(idx)])
    np.testing.assert_array_equal(got.numpy(), np.take(data, idx, axis=axis))


def test_a_batch_gives_each_image_its_own_output():
    model, q = quantized()
    graph = _qat._Graph(q, model, probs=False)
    same = [x for x in XS if x.shape == XS[0].shape][:3]
    with torch.no_grad():
        batched = graph.outputs([torch.tensor(x, dtype=torch.float64) for x in same])
        alone = [graph.outputs([torch.tensor(x, dtype=torch.float64)])[0] for x in same]
    for b, a in zip(batched, alone, strict=True):
        assert torch.allclose(b, a, atol=1e-12)


def test_an_untrained_export_is_the_model_itself():
    """Export writes back what it read: steps and weights the quantizer chose, biases
    requantized to the same steps (a weight exactly between two int8 values may round the
    other way)."""
    model, q = quantized()
    out = _qat._Graph(q, model, probs=False).export(q)
    before, after = arrays(q), arrays(out)
    assert before.keys() == after.keys()
    for name, v in before.items():
        if v.dtype.kind == "f":
            assert np.allclose(after[name], v, rtol=1e-6, atol=0), name
        else:
            assert np.mean(after[name] != v) <= 0.01, name
            assert np.abs(after[name].astype(np.int64) - v).max() <= 1, name
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in q.graph.node]


def test_the_fine_tune_restores_a_spoiled_range():
    """An input step 4x too wide loses two bits of the image; the fine-tune learns it back:
    the KL divergence from the float model falls on the tensors it trained on and on ones it
    did not, and so does onnxruntime's output error of the exported model, below even that of
    the unspoiled quantizer's ranges (measured: KL 0.32x and 0.23x, output error 0.26x of the
    spoiled model's and 0.38x of the unspoiled one's)."""
    model, q = quantized()
    spoiled = ss.with_factors(q, {q.graph.input[0].name: 4.0})
    opts = options(qat_epochs=30, qat_lr_scales=0.05, qat_lr_weights=1e-3)
    out, found = _qat.finetune(spoiled, model, XS, HELD, teacher(model), opts)
    assert found.images == 16 and found.held_out_images == 8 and found.epochs == 30
    assert found.kl_after < 0.5 * found.kl_before
    assert found.held_out_kl_after < 0.5 * found.held_out_kl_before
    ref = [tiny.run(model, x).astype(np.float64) for x in HELD]
    assert rel_mse(out, HELD, ref, RT) < 0.5 * rel_mse(spoiled, HELD, ref, RT)
    assert rel_mse(out, HELD, ref, RT) < 0.7 * rel_mse(q, HELD, ref, RT)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in q.graph.node]


def test_the_fine_tune_is_reproducible():
    model, q = quantized()
    opts = options(qat_epochs=2, qat_lr_weights=1e-3, qat_lr_scales=1e-2)
    runs = [_qat.finetune(q, model, XS, HELD, teacher(model), opts) for _ in range(2)]
    assert runs[0][0].SerializeToString() == runs[1][0].SerializeToString()
    assert runs[0][1] == runs[1][1]
    assert runs[0][0].SerializeToString() != q.SerializeToString()  # it did train


def test_an_op_the_graph_cannot_run_is_named_before_training():
    _, q = quantized()
    other = onnx.ModelProto()
    other.CopyFrom(q)
    other.graph.node.append(helper.make_node("HardSwish", ["logits"], ["hs"], name="hs"))
    with pytest.raises(PassError, match=r"HardSwish.*qat_images: 0"):
        _qat.check_supported("quantize_to_tolerance", other)


def test_quantize_to_tolerance_trains_what_it_judges_and_reports_it():
    plain, tuned = tiny.tolerance_pair(qat_images=8, qat_epochs=2, qat_held_out=4)
    assert "qat" not in tiny.tolerance_report(plain)  # off: the report (and bytes) as before
    found = tiny.tolerance_report(tuned)["qat"]
    assert found["images"] == 8 and found["epochs"] == 2 and found["held_out_images"] == 4
    assert {"kl_before", "kl_after", "held_out_kl_before", "held_out_kl_after"} <= found.keys()
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in plain.graph.node]
    assert tuned.SerializeToString() != plain.SerializeToString()


def test_qat_and_scale_search_are_refused_together():
    with pytest.raises(pydantic.ValidationError, match="qat_images and scale_search_images"):
        qtt.QuantizeToToleranceOptions(qat_images=8, scale_search_images=8)


def test_a_search_tuning_several_models_runs_the_float_teacher_once(monkeypatch):
    """Each k the search tries is fine-tuned against the same float outputs, computed once.
    (The fine-tune itself is stubbed: the torch graph runs the tiny model's head one image at
    a time only in its dynamic form, and what is checked here is what it is handed.)"""
    model = tiny.tiny_ctc()
    teachers: list[tuple] = []

    def fake(m, float_model, xs, held, teacher, *rest):
        teachers.append(teacher)
        return m, QatRecord(images=len(xs), epochs=1, held_out_images=len(held), kl_before=0,
                            kl_after=0, held_out_kl_before=0, held_out_kl_after=0)  # fmt: skip

    monkeypatch.setattr(qtt.qat, "finetune", fake)
    ctx = registry.PassContext(
        calibration=tiny.inputs(8),
        validation={"clean": list(zip(tiny.inputs(6, seed=3), ["a"] * 6, strict=True))},
    )
    strict = qtt.QuantizeToToleranceOptions(
        min_agreement=1.0, max_accuracy_drop_pts=0.0, dynamic_op_types=[],
        static_op_types=["Conv", "Gemm"], qat_images=4, qat_held_out=2,
    )  # fmt: skip
    with pytest.raises(PassError, match="no variant"):
        qtt.quantize_to_tolerance(model, strict, ctx)
    assert len(teachers) >= 2 and all(t is teachers[0] for t in teachers)
    train, held = teachers[0]
    assert len(train) == 4 and len(held) == 2
    np.testing.assert_array_equal(train[0], tiny.run(model, tiny.inputs(8)[0]))
