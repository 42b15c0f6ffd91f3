import dataclasses
import importlib.resources
import json
import time

import numpy as np
import onnx
import pydantic
import pytest
import tiny
from onnx import helper, numpy_helper

from ocr_bundles_runtime.decode import decode
from stages import modelio, registry
from stages.errors import PassError
from stages.passes import quantize_to_tolerance as qtt
from stages.passes.quantize_to_tolerance import (
    QuantizeToToleranceOptions,
    quantize_to_tolerance,
)
from stages.records import ToleranceReport, ToleranceStep
from stages.scoring import Scoring

# Quantization tolerance on the tiny model (logits up to ~2.3): the quantize_static/dynamic tests
# measured max abs error <= 0.05 and frame argmax agreement >= 0.97; the bounds leave headroom.
MAX_ABS = 0.15
MIN_FRAME_AGREE = 0.9
LOOSE = {"max_accuracy_drop_pts": 100.0, "min_agreement": 0.0}


def texts(model: onnx.ModelProto, xs: list[np.ndarray]) -> list[str]:
    spec = modelio.spec(model)
    return [decode(tiny.run(model, x), spec.charset, spec.layout, spec.blank).text for x in xs]


def self_labelled(model: onnx.ModelProto, n: int, seed: int = 3) -> list[tuple[np.ndarray, str]]:
    """Validation pairs labelled with the model's own predictions: reference accuracy 100 %."""
    xs = tiny.inputs(n, seed=seed)
    return list(zip(xs, texts(model, xs), strict=True))


def context(model: onnx.ModelProto, n_val: int = 20, **kw) -> registry.PassContext:
    """One validation set, 'clean', self-labelled."""
    validation = {"clean": self_labelled(model, n_val)}
    return registry.PassContext(calibration=tiny.inputs(8), validation=validation, **kw)


def report(model: onnx.ModelProto) -> ToleranceReport:
    meta = {p.key: p.value for p in model.metadata_props}
    return ToleranceReport.model_validate(json.loads(meta[qtt.REPORT_KEY]))


def steps(rep: ToleranceReport) -> list[tuple[int, bool, bool]]:
    return [(s.k, s.dynamic, s.accepted) for s in rep.steps]


def assert_close(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    tiny.assert_quantized_close(model, out, MAX_ABS, MIN_FRAME_AGREE)


def opset12(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny model at ddddocr's opset 12: Squeeze takes its axes as an attribute there."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    axes = next(t for t in out.graph.initializer if t.name == "sq_axes")
    squeeze = next(n for n in out.graph.node if n.op_type == "Squeeze")
    squeeze.CopyFrom(
        helper.make_node(
            "Squeeze",
            squeeze.input[:1],
            squeeze.output,
            squeeze.name,
            axes=numpy_helper.to_array(axes).tolist(),
        )
    )
    out.graph.initializer.remove(axes)
    out.opset_import[0].version = 12
    return out


def test_loose_tolerance_quantizes_everything_with_no_float_node():
    model = tiny.tiny_ctc()
    before = model.SerializeToString()
    opts = QuantizeToToleranceOptions(always_rank=True, **LOOSE)
    out = quantize_to_tolerance(model, opts, context(model))
    onnx.checker.check_model(out)
    ops = tiny.op_counts(out)
    # Conv in QDQ: Q+DQ on its activation in/out, DQ of int8 weight and int32 bias
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4 and ops["Conv"] == 1
    producer = {o: n for n in out.graph.node for o in n.output}
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert [producer[name].op_type for name in conv.input] == ["DequantizeLinear"] * 3
    # static_per_channel (default true) reaches the quantizer: a per-axis weight scale
    weight_dq = producer[conv.input[1]]
    assert [(a.name, a.i) for a in weight_dq.attribute] == [("axis", 0)]
    # dynamic group: LSTM fused op, Gemm -> DynamicQuantizeLinear + MatMulInteger chain
    assert ops["DynamicQuantizeLSTM"] == 1 and "LSTM" not in ops and "Gemm" not in ops
    assert ops["MatMulInteger"] == 1 and ops["DynamicQuantizeLinear"] == 1
    # the SiLU stays float: quantizing it made ddddocr's model 3x slower
    assert ops["Sigmoid"] == 1 and "ConvInteger" not in ops
    assert_close(model, out)
    rep = report(out)
    assert rep.float_nodes == [] and rep.why == {}
    # measured (exact int8 kernels, snapped ranges): 17 of the 20 self-labelled images keep
    # their prediction, accepted as asked
    assert rep.reference == {"clean": 100.0}
    assert rep.steps == [
        ToleranceStep(
            k=0, dynamic=True, sets={"clean": {"accuracy": 85.0, "agreement": 0.85}}, accepted=True
        )
    ]
    sens = {s.node: s for s in rep.sensitivity}
    assert set(sens) == {"conv", "lstm", "head"}
    assert all(s.quantized and s.rel_mse > 0 for s in sens.values())
    assert [sens[n].group for n in ("conv", "lstm", "head")] == ["static", "dynamic", "dynamic"]
    assert modelio.spec(out) == modelio.spec(model)
    assert out.graph.output[0] == model.graph.output[0]
    assert model.SerializeToString() == before


def test_nodes_are_ranked_only_when_the_fully_quantized_model_fails(monkeypatch):
    model = tiny.tiny_ctc()
    ctx = context(model)
    ranked = quantize_to_tolerance(
        model, QuantizeToToleranceOptions(always_rank=True, **LOOSE), ctx
    )
    calls = []
    rank = qtt._rank
    monkeypatch.setattr(qtt, "_rank", lambda *a: calls.append(1) or rank(*a))
    lazy = quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), ctx)
    assert calls == [] and report(lazy).sensitivity == []
    assert steps(report(lazy)) == steps(report(ranked)) == [(0, True, True)]
    # the same model either way; only the report's measured sensitivities differ
    strip = [p for p in lazy.metadata_props if p.key == qtt.REPORT_KEY]
    assert strip and lazy.graph == ranked.graph
    # a tolerance the fully quantized model misses ranks the nodes (and fails here: the
    # tiny model's texts flip whichever node stays float)
    strict = QuantizeToToleranceOptions(min_agreement=1.0, max_accuracy_drop_pts=0.0)
    evaluated = []
    evaluate = qtt._evaluate
    monkeypatch.setattr(qtt, "_evaluate", lambda *a: evaluated.append(1) or evaluate(*a))
    with pytest.raises(PassError, match="no variant"):
        quantize_to_tolerance(model, strict, ctx)
    assert calls == [1]
    # k=0 and k=1 with the dynamic group int8, then k=0 with it float (k=1 with it float is
    # the float model): the first try is not evaluated twice
    assert len(evaluated) == 3


def test_the_float_reference_is_run_once_per_model_and_images(monkeypatch):
    """The levers stage quantizes one float model once per variant: its texts and probe outputs
    are computed once, and every quantization equals the one a fresh process makes."""
    monkeypatch.setattr(qtt, "_REFERENCE", qtt.OrderedDict())
    model, other = tiny.tiny_ctc(), tiny.tiny_ctc(seed=1)
    floats = {model.SerializeToString(), other.SerializeToString()}
    calls: list[int] = []
    make = qtt.make_session
    monkeypatch.setattr(
        qtt, "make_session", lambda data, rt: (data in floats and calls.append(1)) or make(data, rt)
    )
    ctx = context(model)
    first = quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), ctx)
    per_tensor = QuantizeToToleranceOptions(**LOOSE, static_per_channel=False)
    quantize_to_tolerance(model, per_tensor, ctx)
    assert len(calls) == 1
    qtt._REFERENCE.clear()
    again = quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), ctx)
    assert again.SerializeToString() == first.SerializeToString() and len(calls) == 2
    # other validation images or another model: run again
    quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), context(model, n_val=12))
    quantize_to_tolerance(other, QuantizeToToleranceOptions(**LOOSE), context(other))
    assert len(calls) == 4


def test_report_round_trips_through_its_record():
    model = tiny.tiny_ctc()
    out = quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), context(model))
    raw = json.loads({p.key: p.value for p in out.metadata_props}[qtt.REPORT_KEY])
    rep = ToleranceReport.model_validate(raw)
    assert rep.model_dump(mode="json") == raw
    assert set(raw) == {"reference", "sensitivity", "steps", "float_nodes", "why"}
    with pytest.raises(pydantic.ValidationError):  # a record, not a free-form dict
        ToleranceReport.model_validate({**raw, "final_agreement": 1.0})


def test_strict_agreement_keeps_the_dynamic_group_float():
    """Measured with per-tensor Conv scales (exact int8 kernels, snapped ranges): all-int8
    agrees on 17/20 images, Conv float 17/20; Conv int8 alone 20/20."""
    model = tiny.tiny_ctc()
    opts = QuantizeToToleranceOptions(
        min_agreement=1.0, max_accuracy_drop_pts=0.0, static_per_channel=False
    )
    out = quantize_to_tolerance(model, opts, context(model))
    onnx.checker.check_model(out)
    rep = report(out)
    assert steps(rep) == [(0, True, False), (1, True, False), (0, False, True)]
    assert [s.sets["clean"]["agreement"] for s in rep.steps] == [0.85, 0.85, 1.0]
    assert rep.float_nodes == ["lstm", "head"]
    assert rep.why["lstm"].startswith("dynamic group kept float")
    ops = tiny.op_counts(out)
    assert ops["QuantizeLinear"] == 2 and ops["LSTM"] == 1 and ops["Gemm"] == 1
    assert "DynamicQuantizeLSTM" not in ops
    # per tensor: the weight's DequantizeLinear has a scalar scale and no axis
    dq = next(n for n in out.graph.node if n.name == "conv_w_DequantizeLinear")
    assert not dq.attribute
    assert {s.node: s.quantized for s in rep.sensitivity} == {
        "conv": True,
        "lstm": False,
        "head": False,
    }


def test_with_the_dynamic_group_float_k_is_searched_again():
    """Two static candidates (Conv, Gemm head), the LSTM dynamic. Measured on 40 images:
    only Gemm float with the LSTM float agrees on all of them."""
    model = tiny.tiny_ctc()
    opts = QuantizeToToleranceOptions(
        static_op_types=["Conv", "Gemm"],
        dynamic_op_types=["LSTM"],
        static_per_channel=False,
        min_agreement=1.0,
    )
    out = quantize_to_tolerance(model, opts, context(model, 40))
    rep = report(out)
    assert steps(rep) == [
        (0, True, False),
        (1, True, False),
        (2, True, False),
        (0, False, False),
        (1, False, True),
    ]
    assert rep.float_nodes == ["head", "lstm"]
    assert rep.why["head"].startswith("sensitivity rank 0")
    ops = tiny.op_counts(out)
    assert (ops["Gemm"], ops["LSTM"], ops["QuantizeLinear"]) == (1, 1, 2)


def test_keep_float_nodes_stay_float_and_the_search_ranks_the_others():
    """keep_float gives the model quantize_static builds with that node excluded: the same
    outputs, bit for bit, as leaving its op type out of every group."""
    model = tiny.tiny_ctc()
    two = {"static_op_types": ["Conv", "Gemm"], "dynamic_op_types": ["LSTM"], **LOOSE}
    ctx = context(model)
    out = quantize_to_tolerance(
        model, QuantizeToToleranceOptions(keep_float=["head"], always_rank=True, **two), ctx
    )
    rep = report(out)
    assert rep.float_nodes == ["head"] and rep.why == {"head": "keep_float"}
    assert steps(rep) == [(0, True, True)]
    # only the others are ranked; the kept node is reported float
    assert [(s.node, s.quantized) for s in rep.sensitivity] == [("conv", True), ("lstm", True)]
    ops = tiny.op_counts(out)
    # the head (onnxruntime's quantizer writes a Gemm as MatMul + Add) reads float weights
    assert ops["QuantizeLinear"] == 2 and ops["DynamicQuantizeLSTM"] == 1
    assert ops["MatMul"] == 1 and "MatMulInteger" not in ops
    inits = {t.name for t in out.graph.initializer}
    head = next(n for n in out.graph.node if n.op_type == "MatMul")
    assert head.input[1] in inits
    assert (
        numpy_helper.to_array(
            next(t for t in out.graph.initializer if t.name == head.input[1])
        ).dtype
        == np.float32
    )
    no_gemm = quantize_to_tolerance(
        model,
        QuantizeToToleranceOptions(static_op_types=["Conv"], dynamic_op_types=["LSTM"], **LOOSE),
        ctx,
    )
    everything = quantize_to_tolerance(model, QuantizeToToleranceOptions(**two), ctx)
    for x in tiny.inputs(4, seed=5):
        assert np.array_equal(tiny.run(out, x), tiny.run(no_gemm, x))
        # the numeric effect: the int8 head's error is gone
        assert not np.array_equal(tiny.run(out, x), tiny.run(everything, x))
    assert_close(model, out)


def test_rank_by_sensitivity_per_mac_puts_cheap_nodes_first():
    """80 classes make the head the most sensitive node but 7.5x the conv's MACs on the first
    calibration tensor (width 16): the conv is 8 channels x 8 columns x (1 x 8 x 2) = 1024,
    the head 8 frames x 80 classes x 12 inputs = 7680."""
    model = tiny.tiny_ctc(classes=80)
    two = {"static_op_types": ["Conv", "Gemm"], "dynamic_op_types": ["LSTM"], **LOOSE}
    ctx = context(model)
    ranked = {}
    for rank_by in ("sensitivity", "sensitivity_per_mac"):
        opts = QuantizeToToleranceOptions(rank_by=rank_by, always_rank=True, **two)
        ranked[rank_by] = report(quantize_to_tolerance(model, opts, ctx)).sensitivity[:2]
    plain, per_mac = ranked["sensitivity"], ranked["sensitivity_per_mac"]
    assert [s.node for s in plain] == ["head", "conv"] and plain[0].macs is None
    assert [(s.node, s.macs) for s in per_mac] == [("conv", 1024), ("head", 7680)]
    # the same sensitivities, only the order differs: rel_mse / MACs, largest first
    assert {s.node: s.rel_mse for s in plain} == {s.node: s.rel_mse for s in per_mac}
    ratio = [s.rel_mse / s.macs for s in per_mac]
    assert ratio == sorted(ratio, reverse=True)
    assert plain[0].rel_mse > plain[1].rel_mse
    with pytest.raises(pydantic.ValidationError, match="needs sensitivity quantize_one"):
        QuantizeToToleranceOptions(rank_by="sensitivity_per_mac", sensitivity="keep_one")


def test_max_float_nodes_counts_the_nodes_beyond_keep_float():
    model = tiny.tiny_ctc()
    opts = QuantizeToToleranceOptions(
        static_op_types=["Conv", "Gemm"],
        dynamic_op_types=[],
        keep_float=["head"],
        max_float_nodes=0,
        min_agreement=1.0,
    )
    with pytest.raises(PassError, match=r"beyond keep_float \['head'\]") as err:
        quantize_to_tolerance(model, opts, context(model, 60))
    assert "best, with 0 more float static nodes" in str(err.value)


@pytest.mark.parametrize(
    ("keep", "named"),
    [(["Conv_7"], "Conv_7"), (["lstm"], "lstm"), (["conv", "nope"], "nope")],
)
def test_keep_float_names_must_be_static_candidates(keep, named):
    model = tiny.tiny_ctc()
    opts = QuantizeToToleranceOptions(keep_float=keep, **LOOSE)
    with pytest.raises(PassError, match="keep_float names") as err:
        quantize_to_tolerance(model, opts, context(model))
    message = str(err.value)
    assert named in message and "(those are: conv)" in message


def _split_by_agreement(model: onnx.ModelProto, n: int) -> tuple[list, list]:
    """Self-labelled inputs the all-int8 variant (what LOOSE accepts first) predicts the same
    as the float model, and those it gets wrong."""
    pool = self_labelled(model, n, seed=11)
    int8 = quantize_to_tolerance(
        model,
        QuantizeToToleranceOptions(**LOOSE),
        registry.PassContext(calibration=tiny.inputs(8), validation={"pool": pool}),
    )
    assert steps(report(int8)) == [(0, True, True)]
    got = texts(int8, [x for x, _ in pool])
    same = [pair for pair, text in zip(pool, got, strict=True) if text == pair[1]]
    differ = [pair for pair, text in zip(pool, got, strict=True) if text != pair[1]]
    return same, differ


def test_every_validation_set_must_be_within_tolerance():
    model = tiny.tiny_ctc()
    same, differ = _split_by_agreement(model, 40)
    assert len(same) >= 12 and differ  # measured: 39 and 1
    # pooled, 12 of 13 agree (0.92 >= 0.9); per set, 'hard' has 2 of 3 (0.67 < 0.9)
    sets = {"clean": same[:10], "hard": [*same[10:12], differ[0]]}
    opts = QuantizeToToleranceOptions(min_agreement=0.9, max_accuracy_drop_pts=100.0)
    calibration = tiny.inputs(8)
    ctx = registry.PassContext(calibration=calibration, validation=sets)
    rep = report(quantize_to_tolerance(model, opts, ctx))
    first = rep.steps[0]
    assert (first.k, first.dynamic, first.accepted) == (0, True, False)
    assert first.sets["clean"] == {"accuracy": 100.0, "agreement": 1.0}
    assert first.sets["hard"]["agreement"] == pytest.approx(2 / 3)
    assert rep.reference == {"clean": 100.0, "hard": 100.0}
    accepted = rep.steps[-1]
    assert accepted.accepted and all(s.accepted is False for s in rep.steps[:-1])
    assert all(r["agreement"] >= 0.9 for r in accepted.sets.values())
    assert set(accepted.sets) == {"clean", "hard"}
    assert (accepted.k, accepted.dynamic) != (0, True)
    # the same images as one set: the all-int8 variant is accepted at once
    pooled = registry.PassContext(
        calibration=calibration, validation={"all": sets["clean"] + sets["hard"]}
    )
    rep = report(quantize_to_tolerance(model, opts, pooled))
    assert steps(rep) == [(0, True, True)]
    assert rep.steps[0].sets["all"]["agreement"] == pytest.approx(12 / 13)


def test_texts_are_compared_through_the_scoring():
    model = tiny.tiny_ctc()
    shouted = [(x, f" {label.upper()} ") for x, label in self_labelled(model, 6)]
    opts = QuantizeToToleranceOptions(**LOOSE)
    ctx = registry.PassContext(calibration=tiny.inputs(8), validation={"clean": shouted})
    assert report(quantize_to_tolerance(model, opts, ctx)).reference == {"clean": 0.0}
    ctx = registry.PassContext(
        calibration=tiny.inputs(8),
        validation={"clean": shouted},
        scoring=Scoring(strip=True, casefold=True),
    )
    assert report(quantize_to_tolerance(model, opts, ctx)).reference == {"clean": 100.0}


def test_unreachable_tolerance_raises_with_the_best_numbers():
    model = tiny.tiny_ctc()
    # Conv is the only group and may not stay float: 56/60 images agree (measured)
    opts = QuantizeToToleranceOptions(dynamic_op_types=[], max_float_nodes=0, min_agreement=1.0)
    with pytest.raises(
        PassError,
        match=r"clean: accuracy 93\.33 % \(reference 100\.00 %\), agreement 0\.933",
    ) as err:
        quantize_to_tolerance(model, opts, context(model, 60))
    message = str(err.value)
    assert "max_accuracy_drop_pts 0.5" in message and "min_agreement 1.0" in message
    assert "max_float_nodes=0" in message and err.value.pass_name == "quantize_to_tolerance"


def test_keep_one_sensitivity_ranks_every_candidate():
    model = tiny.tiny_ctc(head="matmul")
    opts = QuantizeToToleranceOptions(sensitivity="keep_one", always_rank=True, **LOOSE)
    out = quantize_to_tolerance(model, opts, context(model))
    rep = report(out)
    assert [s.node for s in rep.sensitivity] == ["conv", "lstm", "head_mm"]
    assert tiny.op_counts(out)["MatMulInteger"] == 1
    assert_close(model, out)


def test_empty_static_op_types_keeps_conv_float():
    model = tiny.tiny_ctc()
    out = quantize_to_tolerance(
        model,
        QuantizeToToleranceOptions(static_op_types=[], always_rank=True, **LOOSE),
        context(model),
    )
    ops = tiny.op_counts(out)
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops["Conv"] == 1 and ops["DynamicQuantizeLSTM"] == 1 and ops["MatMulInteger"] == 1
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert list(conv.input) == ["input1", "conv_w", "conv_b"]
    rep = report(out)
    assert [(s.node, s.group) for s in rep.sensitivity] == [
        ("lstm", "dynamic"),
        ("head", "dynamic"),
    ]
    assert rep.float_nodes == [] and steps(rep) == [(0, True, True)]


def test_percentile_calibration_reaches_the_static_group():
    # an outlier pixel in one calibration image: minmax spends the input's 8 bits on it, a
    # 99th-percentile range clips it, so the static group's input scale must shrink
    model = tiny.tiny_ctc()
    images = [x.copy() for x in tiny.inputs(8)]
    images[3][0, 0, 2, 5] = 40.0
    ctx = dataclasses.replace(context(model), calibration=images)

    def input_scale(opts: QuantizeToToleranceOptions) -> float:
        out = quantize_to_tolerance(model, opts, ctx)
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        image = out.graph.input[0].name
        q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == image)
        return float(inits[q.input[1]])

    flat = {"static_per_channel": False, "dynamic_op_types": [], **LOOSE}
    minmax = input_scale(QuantizeToToleranceOptions(**flat))
    pct = input_scale(
        QuantizeToToleranceOptions(calibrate_method="percentile", percentile=99.0, **flat)
    )
    assert minmax == pytest.approx(40.0 / 255, rel=0.02)
    assert pct < minmax / 4


def test_percentile_tails_reach_the_static_group():
    # quantize_static's test: separate tails drop the two +9 pixels that symmetric ones keep
    model = tiny.tiny_ctc()
    ctx = dataclasses.replace(context(model), calibration=tiny.skewed_inputs())
    flat = {"static_per_channel": False, "dynamic_op_types": [], **LOOSE}
    pct = {"calibrate_method": "percentile", "percentile": 99.0}

    def input_top(tails: str) -> float:
        opts = QuantizeToToleranceOptions(**flat, **pct, percentile_tails=tails)
        out = quantize_to_tolerance(model, opts, ctx)
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        image = out.graph.input[0].name
        q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == image)
        return (255 - int(inits[q.input[2]])) * float(inits[q.input[1]])

    assert input_top("symmetric") == pytest.approx(9.0, abs=0.2)
    assert input_top("separate") == pytest.approx(2.9, abs=0.2)


def test_bias_correction_reaches_the_static_group():
    """quantize_static's bias correction, asked for here, moves only the static group's int32
    bias (its numeric effect is tested in test_quantize_static)."""
    model = tiny.tiny_ctc()
    ctx = context(model)

    def int32_biases(opts: dict) -> dict[str, bytes]:
        out = quantize_to_tolerance(model, QuantizeToToleranceOptions(**opts, **LOOSE), ctx)
        return {
            t.name: t.SerializeToString()
            for t in out.graph.initializer
            if t.data_type == onnx.TensorProto.INT32
        }

    plain, fixed = int32_biases({}), int32_biases({"bias_correction_images": 8})
    assert plain.keys() == fixed.keys() and plain != fixed


def test_static_per_channel_at_opset12_is_refused_before_any_work(monkeypatch):
    model = opset12(tiny.tiny_ctc())

    def no_session(*args, **kwargs):
        raise AssertionError("ran the model before refusing")

    monkeypatch.setattr(qtt, "make_session", no_session)
    with pytest.raises(
        PassError, match=r"static_per_channel needs opset >= 13.*opset 12: add convert_opset"
    ):
        quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), context(model))
    monkeypatch.undo()
    # without a static group there is no per-axis DequantizeLinear to write
    opts = QuantizeToToleranceOptions(static_op_types=[], **LOOSE)
    out = quantize_to_tolerance(model, opts, context(model))
    assert tiny.op_counts(out)["DynamicQuantizeLSTM"] == 1


def test_static_group_errors_are_reported_as_this_pass():
    model = tiny.tiny_ctc()
    opts = QuantizeToToleranceOptions(static_op_types=["LSTM"], dynamic_op_types=["Gemm"])
    with pytest.raises(PassError, match=r"static_op_types \['LSTM'\].*use quantize_dynamic") as e:
        quantize_to_tolerance(model, opts, context(model, 4))
    assert e.value.pass_name == "quantize_to_tolerance"


def test_unnamed_nodes_get_names_the_report_uses():
    model = tiny.tiny_ctc()
    for node in model.graph.node:
        node.name = ""
    opts = QuantizeToToleranceOptions(always_rank=True, **LOOSE)
    out = quantize_to_tolerance(model, opts, context(model))
    assert {s.node for s in report(out).sensitivity} == {"Conv_0", "LSTM_5", "Gemm_8"}
    assert not any(n.name == "" for n in out.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize(
    "validation",
    [{}, {"clean": [(tiny.inputs(1)[0], "a")], "hard": []}],
    ids=["no_set", "one_set_empty"],
)
def test_missing_validation_raises(validation):
    model = tiny.tiny_ctc()
    ctx = registry.PassContext(calibration=tiny.inputs(4), validation=validation)
    with pytest.raises(PassError, match=r"validation images from every source"):
        quantize_to_tolerance(model, QuantizeToToleranceOptions(), ctx)


def test_empty_calibration_raises():
    model = tiny.tiny_ctc()
    ctx = registry.PassContext(validation={"clean": self_labelled(model, 2)})
    with pytest.raises(PassError, match="needs calibration data"):
        quantize_to_tolerance(model, QuantizeToToleranceOptions(), ctx)


def test_already_quantized_input_raises():
    model = tiny.tiny_ctc()
    out = quantize_to_tolerance(model, QuantizeToToleranceOptions(**LOOSE), context(model))
    with pytest.raises(PassError, match="already quantized"):
        quantize_to_tolerance(out, QuantizeToToleranceOptions(**LOOSE), context(model))


def test_options_are_checked():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QuantizeToToleranceOptions(tolerance=1)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        QuantizeToToleranceOptions(keep_slower_int8=True)  # removed: no timing decides
    with pytest.raises(pydantic.ValidationError, match="both static_op_types"):
        QuantizeToToleranceOptions(static_op_types=["Conv", "Gemm"])
    with pytest.raises(pydantic.ValidationError, match="both empty"):
        QuantizeToToleranceOptions(static_op_types=[], dynamic_op_types=[])
    with pytest.raises(pydantic.ValidationError):
        QuantizeToToleranceOptions(min_agreement=1.5)
    with pytest.raises(pydantic.ValidationError, match="percentile is only used"):
        QuantizeToToleranceOptions(percentile=99.9)
    with pytest.raises(pydantic.ValidationError, match="percentile_tails is only used"):
        QuantizeToToleranceOptions(percentile_tails="separate")
    assert registry.get("quantize_to_tolerance").exact is False


def _captchas(n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    from ocr_bundles_runtime.preprocess import Preprocess, preprocess
    from stages.data import clean

    style = clean.CaptchaStyle(alphabet="abcdefghijklmnopqrstuvwxyz0123456789")
    pairs = [clean.sample(style, seed, i) for i in range(n)]
    return [(preprocess(png, Preprocess()), label) for label, png in pairs]


@pytest.mark.integration
def test_real_pruned_model_meets_the_tolerance_on_every_set():
    import ddddocr.charsets

    from stages.passes.convert_opset import ConvertOpsetOptions, convert_opset
    from stages.passes.fix_output_shape import FixOutputShapeOptions, fix_output_shape
    from stages.passes.prune_charset import PruneCharsetOptions, prune_charset

    path = importlib.resources.files("ddddocr") / "common.onnx"
    model = modelio.with_spec(onnx.load(str(path)), list(ddddocr.charsets.CHARSET_BETA), "TBC", 0)
    empty = registry.PassContext()
    model = fix_output_shape(model, FixOutputShapeOptions(rank=0, infer_shapes=False), empty)
    model = prune_charset(
        model, PruneCharsetOptions(chars="abcdefghijklmnopqrstuvwxyz0123456789"), empty
    )
    model = convert_opset(model, ConvertOpsetOptions(), empty)  # for static_per_channel
    calib = [x for x, _ in _captchas(4, seed=11)]
    validation = {"clean": _captchas(20, seed=7), "other": _captchas(20, seed=8)}
    ctx = registry.PassContext(calibration=calib, validation=validation)
    opts = QuantizeToToleranceOptions(
        calibration_images=4, sensitivity_images=2, max_accuracy_drop_pts=5.0, min_agreement=0.9
    )
    start = time.monotonic()
    out = quantize_to_tolerance(model, opts, ctx)
    seconds = time.monotonic() - start
    rep = report(out)
    print(json.dumps({"seconds": seconds, "mb": modelio.size_mb(out), **rep.model_dump()}))
    assert seconds < 60
    accepted = rep.steps[-1]
    assert accepted.accepted and set(accepted.sets) == {"clean", "other"}
    for name, r in accepted.sets.items():
        assert rep.reference[name] - r["accuracy"] <= 5.0 and r["agreement"] >= 0.9
    assert modelio.size_mb(out) < modelio.size_mb(model) / 2
    assert modelio.spec(out) == modelio.spec(model)
