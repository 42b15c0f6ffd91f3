"""Mixed int8 quantization that keeps the most sensitive nodes float until a tolerance holds.

Before: float32 Conv, LSTM and Gemm/MatMul nodes.
After:  static QDQ (quantize_static, calibrated) on `static_op_types` except the k most sensitive
        nodes, then dynamic int8 (quantize_dynamic's arguments) on `dynamic_op_types`; k is the
        smallest number of float nodes for which exact-match accuracy and prediction agreement on
        context.validation stay within `max_accuracy_drop_pts` and `min_agreement` of the input.
        The decision goes to metadata 'report.quantize_to_tolerance' (JSON): sensitivity of every
        node, each tried k with its accuracy/agreement, the float nodes and why, latencies.
Exact: no; the tolerance on the validation set is the contract. ddddocr's model after charset
       pruning keeps its first Conv ('Conv_0', on the raw image) float: it alone causes most of
       the conv quantization error and costs nothing to keep.

Notes:
- Nodes without a name are named '<op_type>_<index>' first (onnxruntime selects by name); the
  output keeps those names so the report's node names point at real nodes.
- Sigmoid/Mul are never offered: quantizing the SiLU made ddddocr's model 3x slower, as does
  Conv through ConvInteger (dynamic), so Conv is only ever quantized statically.
- quantize_static/quantize_dynamic refuse an already quantized model, so the dynamic step on the
  statically quantized model reuses quantize_dynamic's argument mapping and the shared helpers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import onnx
import onnxruntime.quantization as ort_quant
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import modelio
from ..decode import decode
from ..errors import PassError
from ..inference import make_session, run
from ..registry import PassContext, register
from . import _ort_quant as q
from . import quantize_dynamic as qd
from .quantize_static import QuantizeStaticOptions, quantize_static

NAME = "quantize_to_tolerance"
REPORT_KEY = f"report.{NAME}"
SENSITIVITY_IMAGES = 16  # logits compared per sensitivity probe
CALIBRATION_IMAGES = 32  # activation ranges of the static group


class QuantizeToToleranceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop_pts: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="largest allowed drop of exact-match accuracy on context.validation versus "
        "the input model, in percentage points",
    )
    min_agreement: float = Field(
        0.98,
        ge=0.0,
        le=1.0,
        description="smallest allowed share of validation predictions identical to the input "
        "model's",
    )
    static_op_types: list[str] = Field(
        default_factory=lambda: ["Conv"],
        description="op types quantized statically (QDQ, calibrated on context.calibration); "
        "their nodes are the candidates for staying float",
    )
    dynamic_op_types: list[qd.DynamicOp] = Field(
        default_factory=lambda: ["LSTM", "Gemm", "MatMul"],
        description="op types quantized dynamically (int8 weights); kept all-or-nothing",
    )
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="activation range method of the static group"
    )
    dynamic_per_channel: bool = Field(
        True, description="one weight scale per output channel in the dynamic group"
    )
    reduce_range: bool = Field(
        False, description="7-bit weights (x86 CPUs without VNNI if U8S8 saturation hurts)"
    )
    sensitivity: Literal["quantize_one", "keep_one"] = Field(
        "quantize_one",
        description="how a node's sensitivity is measured: logit divergence when only it is "
        "quantized (quantize_one) or when only it stays float (keep_one; larger = less error "
        "left, so ranked by the error it removes)",
    )
    max_float_nodes: int = Field(
        8, ge=0, description="give up (PassError) rather than keep more static nodes float"
    )
    keep_slower_int8: bool = Field(
        False,
        description="false: time the float input against the all-static-int8 model at "
        "context.runtime's threads and keep the static group float when int8 is slower on "
        "this CPU; true: skip the timing and quantize anyway",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        static = set(self.static_op_types) | {"MatMul" for t in self.static_op_types if t == "Gemm"}
        both = sorted(static & set(self.dynamic_op_types))
        if both:
            raise ValueError(
                f"op types {both} are in both static_op_types and dynamic_op_types; "
                "keep each in one"
            )
        if not self.static_op_types and not self.dynamic_op_types:
            raise ValueError("static_op_types and dynamic_op_types are both empty")
        return self


@dataclass
class _Plan:
    """What is known while searching: reference outputs, candidates and the report."""

    work: onnx.ModelProto
    candidates: list[str]
    dynamic_nodes: list[str]
    ref_logits: list[np.ndarray]  # on the sensitivity tensors
    ref_texts: list[str]  # on validation
    ref_accuracy: float
    report: dict[str, Any] = field(default_factory=dict)
    cache: dict[tuple[tuple[str, ...], bool], onnx.ModelProto] = field(default_factory=dict)


@register(NAME, QuantizeToToleranceOptions, kind="quantize", exact=False)
def quantize_to_tolerance(
    model: onnx.ModelProto, options: QuantizeToToleranceOptions, context: PassContext
) -> onnx.ModelProto:
    """Static+dynamic int8, keeping the fewest most sensitive nodes float to meet a tolerance."""
    plan = _prepare(model, options, context)
    if plan.candidates and not options.keep_slower_int8:
        _drop_static_if_slower(plan, options, context)
    order = _rank(plan, options, context)
    out = _search(plan, order, options, context)
    result = q.finish(out, model)
    for p in list(result.metadata_props):
        if p.key == REPORT_KEY:
            result.metadata_props.remove(p)
    result.metadata_props.add(key=REPORT_KEY, value=json.dumps(plan.report))
    return result


def _prepare(
    model: onnx.ModelProto, options: QuantizeToToleranceOptions, context: PassContext
) -> _Plan:
    if not context.validation:
        raise PassError(
            NAME, "needs labelled validation data, but context.validation is empty; add data/val"
        )
    if not context.calibration:
        raise PassError(NAME, "needs calibration data, but context.calibration is empty")
    q.reject_quantized(NAME, model)
    work = q.working_copy(model)
    candidates = [n.name for n in work.graph.node if n.op_type in options.static_op_types]
    dynamic_types = {"MatMul" if t == "Gemm" else t for t in options.dynamic_op_types}
    dynamic_types |= {"Gemm"} & set(options.dynamic_op_types)
    dynamic_nodes = [n.name for n in work.graph.node if n.op_type in dynamic_types]
    if not candidates and not dynamic_nodes:
        raise PassError(NAME, q.no_match_message(work, options.static_op_types))
    session = make_session(model.SerializeToString(), context.runtime)
    ref_texts = _predict(session, model, context)
    plan = _Plan(
        work=work,
        candidates=candidates,
        dynamic_nodes=dynamic_nodes,
        ref_logits=[run(session, x) for x in _probe(context)],
        ref_texts=ref_texts,
        ref_accuracy=_accuracy(ref_texts, context),
    )
    plan.report = {"reference_accuracy": plan.ref_accuracy, "sensitivity": [], "steps": []}
    return plan


def _probe(context: PassContext) -> list[np.ndarray]:
    return [np.asarray(x, np.float32) for x in context.calibration[:SENSITIVITY_IMAGES]]


def _predict(session: Any, model: onnx.ModelProto, context: PassContext) -> list[str]:
    spec = modelio.spec(model)
    return [
        decode(run(session, np.asarray(x, np.float32)), spec.charset, spec.layout, spec.blank).text
        for x, _ in context.validation
    ]


def _accuracy(texts: list[str], context: PassContext) -> float:
    return 100.0 * float(
        np.mean([t == label for t, (_, label) in zip(texts, context.validation, strict=True)])
    )


def _static_options(
    options: QuantizeToToleranceOptions, exclude: list[str]
) -> QuantizeStaticOptions:
    return QuantizeStaticOptions(
        op_types=list(options.static_op_types),
        nodes_to_exclude=exclude,
        calibrate_method=options.calibrate_method,
        reduce_range=options.reduce_range,
        calibration_images=CALIBRATION_IMAGES,
    )


def _build(
    plan: _Plan,
    options: QuantizeToToleranceOptions,
    context: PassContext,
    float_static: tuple[str, ...],
    dynamic: bool,
) -> onnx.ModelProto:
    """The model with `float_static` kept float, the dynamic group quantized if `dynamic`."""
    key = (tuple(sorted(float_static)), dynamic)
    if key in plan.cache:
        return plan.cache[key]
    out = plan.work
    if set(plan.candidates) - set(float_static):
        out = quantize_static(out, _static_options(options, list(float_static)), context)
    if dynamic and plan.dynamic_nodes:
        out = _dynamic(out, plan.work, options, context, None)
    plan.cache[key] = out
    return out


def _dynamic(
    model: onnx.ModelProto,
    original: onnx.ModelProto,
    options: QuantizeToToleranceOptions,
    context: PassContext,
    only: list[str] | None,
) -> onnx.ModelProto:
    """quantize_dynamic's onnxruntime call, also on an already statically quantized model."""
    dyn = qd.QuantizeDynamicOptions(
        op_types=list(options.dynamic_op_types),
        per_channel=options.dynamic_per_channel,
        reduce_range=options.reduce_range,
        nodes_to_quantize=only,
    )
    args = qd._ort_arguments(model, dyn)
    # onnxruntime asks "already quantized?" of the QDQ model: mixing schemes is on purpose
    with q.dropping_logs("already quantized"):
        out = q.run_quantizer(
            NAME,
            model,
            lambda src, dst: ort_quant.quantize_dynamic(src, dst, **args),
            fix="remove the failing op type from dynamic_op_types",
        )
    advice = (
        "set dynamic_per_channel: false"
        if options.dynamic_per_channel
        else ("remove the op type from dynamic_op_types")
    )
    cause = f"dynamic_per_channel={options.dynamic_per_channel}, {options.dynamic_op_types}"
    first = np.asarray(context.calibration[0], np.float32)
    return q.check_and_finish(NAME, out, original, context, first, (cause, advice))


def _latency_ms(model: onnx.ModelProto, context: PassContext, x: np.ndarray) -> float:
    """Median of timed runs after warm-up, at the device class's thread count.

    Callers pass the widest calibration tensor: the longest run has the least timer noise."""
    session = make_session(model.SerializeToString(), context.runtime)
    for _ in range(3):
        run(session, x)
    times = []
    deadline = time.perf_counter() + 1.0
    while len(times) < 10 or (len(times) < 50 and time.perf_counter() < deadline):
        start = time.perf_counter()
        run(session, x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _drop_static_if_slower(
    plan: _Plan, options: QuantizeToToleranceOptions, context: PassContext
) -> None:
    x = max(_probe(context), key=lambda t: t.shape[-1])
    static = _build(plan, options, context, (), dynamic=False)
    timed = {
        "float": _latency_ms(plan.work, context, x),
        "static_int8": _latency_ms(static, context, x),
        "threads": context.runtime.intra_op_threads,
    }
    plan.report["latency_ms"] = timed
    if timed["static_int8"] > timed["float"]:
        plan.report["static_group_kept_float"] = (
            f"static int8 ({timed['static_int8']:.3g} ms) is slower than float "
            f"({timed['float']:.3g} ms) at {timed['threads']} thread(s); set keep_slower_int8: "
            "true to quantize it anyway"
        )
        plan.candidates = []


def _rel_mse(plan: _Plan, model: onnx.ModelProto, context: PassContext) -> float:
    session = make_session(model.SerializeToString(), context.runtime)
    err = ref = 0.0
    for x, want in zip(_probe(context), plan.ref_logits, strict=True):
        got = run(session, x)
        err += float(np.sum((got.astype(np.float64) - want) ** 2))
        ref += float(np.sum(want.astype(np.float64) ** 2))
    return err / max(ref, 1e-30)


def _rank(plan: _Plan, options: QuantizeToToleranceOptions, context: PassContext) -> list[str]:
    """Static candidates, most sensitive first; every node's number goes into the report."""
    scores: dict[str, float] = {}
    for node in plan.candidates:
        others = [c for c in plan.candidates if c != node]
        exclude = others if options.sensitivity == "quantize_one" else [node]
        # keep_one with a single candidate leaves nothing to quantize: the float model itself
        quantized = (
            quantize_static(plan.work, _static_options(options, exclude), context)
            if set(plan.candidates) - set(exclude)
            else plan.work
        )
        scores[node] = _rel_mse(plan, quantized, context)
    if options.sensitivity == "keep_one" and scores:
        # keeping the most harmful node float leaves the least error behind
        scores = {n: -s for n, s in scores.items()}
    order = sorted(scores, key=lambda n: -scores[n])
    ops = {n.name: n.op_type for n in plan.work.graph.node}
    for node in order:
        plan.report["sensitivity"].append(
            {"node": node, "op_type": ops[node], "group": "static", "rel_mse": abs(scores[node])}
        )
    for node in plan.dynamic_nodes:
        one = _dynamic(plan.work, plan.work, options, context, [node])
        plan.report["sensitivity"].append(
            {
                "node": node,
                "op_type": ops[node],
                "group": "dynamic",
                "rel_mse": _rel_mse(plan, one, context),
            }
        )
    return order


def _evaluate(plan: _Plan, model: onnx.ModelProto, context: PassContext) -> tuple[float, float]:
    session = make_session(model.SerializeToString(), context.runtime)
    texts = _predict(session, plan.work, context)
    agreement = float(np.mean([a == b for a, b in zip(texts, plan.ref_texts, strict=True)]))
    return _accuracy(texts, context), agreement


def _search(
    plan: _Plan, order: list[str], options: QuantizeToToleranceOptions, context: PassContext
) -> onnx.ModelProto:
    """Smallest k of float static nodes meeting the tolerance; dynamic group float last."""
    tries = [(k, True) for k in range(min(options.max_float_nodes, len(order)) + 1)]
    if plan.dynamic_nodes:
        tries.append((0, False))
    best: tuple[float, float, int, bool] | None = None
    for k, dynamic in tries:
        model = _build(plan, options, context, tuple(order[:k]), dynamic)
        if not q.quantized_ops(model):
            continue  # everything float: not a quantization
        acc, agr = _evaluate(plan, model, context)
        accepted = _within(plan, options, acc, agr)
        step = {"k": k, "dynamic": dynamic, "accuracy": acc, "agreement": agr}
        plan.report["steps"].append({**step, "accepted": accepted})
        if best is None or (agr, acc) > (best[1], best[0]):
            best = (acc, agr, k, dynamic)
        if accepted:
            _decide(plan, order, k, dynamic, acc, agr)
            if "latency_ms" in plan.report:  # timing was asked for: time the result too
                x = max(_probe(context), key=lambda t: t.shape[-1])
                plan.report["latency_ms"]["final"] = _latency_ms(model, context, x)
            return model
    raise PassError(NAME, _failure(plan, options, best))


def _within(plan: _Plan, options: QuantizeToToleranceOptions, acc: float, agr: float) -> bool:
    # the epsilon keeps "exactly at the limit" accepted despite float rounding
    return (
        plan.ref_accuracy - acc <= options.max_accuracy_drop_pts + 1e-9
        and agr >= options.min_agreement - 1e-9
    )


def _decide(plan: _Plan, order: list[str], k: int, dynamic: bool, acc: float, agr: float) -> None:
    float_nodes = order[:k] + ([] if dynamic else list(plan.dynamic_nodes))
    ranks = {s["node"]: (i, s["rel_mse"]) for i, s in enumerate(plan.report["sensitivity"])}
    why = {n: f"sensitivity rank {ranks[n][0]}, rel_mse {ranks[n][1]:.3g}" for n in order[:k]}
    if not dynamic:
        why |= {n: "dynamic group kept float to meet the tolerance" for n in plan.dynamic_nodes}
    quantized = set(plan.candidates) - set(order[:k]) | (
        set(plan.dynamic_nodes) if dynamic else set()
    )
    for s in plan.report["sensitivity"]:
        s["quantized"] = s["node"] in quantized
    plan.report |= {
        "float_nodes": float_nodes,
        "why": why,
        "final_accuracy": acc,
        "final_agreement": agr,
    }


def _failure(
    plan: _Plan, options: QuantizeToToleranceOptions, best: tuple[float, float, int, bool] | None
) -> str:
    if best is None:
        return "no quantized variant could be built; check static_op_types and dynamic_op_types"
    acc, agr, k, dynamic = best
    return (
        f"no variant with at most max_float_nodes={options.max_float_nodes} float static nodes "
        f"met the tolerance; best: accuracy {acc:.2f} % (reference {plan.ref_accuracy:.2f} %, "
        f"drop {plan.ref_accuracy - acc:.2f} pts; max_accuracy_drop_pts "
        f"{options.max_accuracy_drop_pts}), agreement {agr:.3f} (min_agreement "
        f"{options.min_agreement}) with {k} float static nodes"
        f"{'' if dynamic else ' and the dynamic group float'}; relax max_accuracy_drop_pts or "
        "min_agreement, raise max_float_nodes, or use more validation images"
    )
