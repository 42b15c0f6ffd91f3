"""Mixed int8 quantization that keeps the most sensitive nodes float until a tolerance holds on
every validation set.

Before: float32 Conv, LSTM and Gemm/MatMul nodes.
After:  static QDQ (quantize_static, calibrated on every source's calib images) on
        `static_op_types` except the k most sensitive nodes, then dynamic int8 (quantize_dynamic's
        arguments) on `dynamic_op_types`; k is the smallest number of float nodes for which
        exact-match accuracy and prediction agreement stay within `max_accuracy_drop_pts` and
        `min_agreement` of the input model on EACH validation set (one per data source), not
        on their average. Only when no k works with the dynamic group quantized is it kept
        float, and k searched again. Nodes named in `keep_float` stay float in every variant
        and k counts the others. The fully quantized model is tried first: nodes are ranked
        only when it fails (or with always_rank), so a model that meets the tolerance costs no
        per-node quantizations. The decision goes to metadata 'report.quantize_to_tolerance'
        (records.ToleranceReport): each node's sensitivity when ranked, each tried k with its
        per-set accuracy/agreement, the float nodes and why.
Exact: no; the tolerance on the validation sets is the contract. The decision depends only on
       the model, these options and the data: never on timings, so a rebuild is identical.

Notes:
- Nodes without a name are named '<op_type>_<index>' first (onnxruntime selects by name); the
  output keeps those names so the report's node names point at real nodes.
- Sigmoid/Mul are never offered: quantizing the SiLU made ddddocr's model 3x slower, as does
  Conv through ConvInteger (dynamic), so Conv is only ever quantized statically. To keep the
  static group float altogether, set static_op_types: [].
- qat_images fine-tunes each judged static model by gradient (_qat, torch, float64) against the
  float model's outputs; scale_search_images is its gradient-free counterpart (one of the two).
- rank_by sensitivity_per_mac orders the candidates by rel_mse / MACs (stages/macs.py, on the
  first calibration tensor): what a speed budget would keep float. On ddddocr's model it keeps
  the first and 1x1 convolutions, which pass the validation gate but transfer less to unseen
  styles than the expensive 3x3 ones the plain ranking keeps (docs/measurements.md).
- static_per_channel needs opset >= 13 (per-axis DequantizeLinear): put convert_opset first.
- quantize_static/quantize_dynamic refuse an already quantized model, so the dynamic step on the
  statically quantized model reuses quantize_dynamic's argument mapping and the shared helpers.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Self

import numpy as np
import onnx
import onnxruntime.quantization as ort_quant
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.session import make_session, run

from .. import modelio
from ..errors import PassError
from ..macs import node_macs, tensor_shapes
from ..records import (
    QatRecord,
    ScaleSearchRecord,
    SensitivityRow,
    ToleranceReport,
    ToleranceStep,
)
from ..registry import PassContext, register
from ..scoring import hits
from . import _ort_quant as q
from . import _qat as qat
from . import _scale_search as scale_search
from . import quantize_dynamic as qd
from .convert_opset import default_opset
from .quantize_static import (
    DEFAULT_PERCENTILE,
    CalibrateMethod,
    PercentileTails,
    QuantizeStaticOptions,
    percentile_only,
    quantize_static,
    samples_digest,
)

NAME = "quantize_to_tolerance"
REPORT_KEY = f"report.{NAME}"


class QuantizeToToleranceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop_pts: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="largest allowed drop of exact-match accuracy versus the input model on "
        "each validation set, in percentage points",
    )
    min_agreement: float = Field(
        0.98,
        ge=0.0,
        le=1.0,
        description="smallest allowed share of predictions identical to the input model's, on "
        "each validation set",
    )
    static_op_types: list[str] = Field(
        default_factory=lambda: ["Conv"],
        description="op types quantized statically (QDQ, calibrated on context.calibration); "
        "their nodes are the candidates for staying float; [] keeps them all float",
    )
    static_per_channel: bool = Field(
        True,
        description="one weight scale per output channel in the static group (needs opset "
        ">= 13: add convert_opset before this pass); per-tensor scales lose accuracy on "
        "convolutions whose channels differ in range (depthwise ones most)",
    )
    dynamic_op_types: list[qd.DynamicOp] = Field(
        default_factory=lambda: ["LSTM", "Gemm", "MatMul"],
        description="op types quantized dynamically (int8 weights); kept all-or-nothing",
    )
    calibrate_method: CalibrateMethod = Field(
        "minmax",
        description="activation range method of the static group (quantize_static's "
        "calibrate_method)",
    )
    percentile: float = Field(
        DEFAULT_PERCENTILE,
        gt=90.0,
        le=100.0,
        description="percentile of |activation| kept in range (see percentile_tails), for "
        "calibrate_method percentile",
    )
    percentile_tails: PercentileTails = Field(
        "symmetric",
        description="symmetric: +-the percentile of |activation|; separate: each tail of the "
        "signed values loses (100 - percentile) / 2 % (quantize_static's percentile_tails)",
    )
    histogram_bins: int = Field(
        2048, ge=128, le=65536, description="histogram bins of entropy/percentile calibration"
    )
    calibration_images: int = Field(
        32,
        ge=1,
        le=100_000,
        description="calibration tensors for the static group's activation ranges (taken "
        "interleaved from every source)",
    )
    sensitivity_images: int = Field(
        16, ge=1, le=1000, description="calibration tensors compared per sensitivity probe"
    )
    bias_correction_images: int = Field(
        0,
        ge=0,
        le=10_000,
        description="quantize_static's empirical bias correction of the static group on this "
        "many calibration tensors; 0: off",
    )
    dynamic_per_channel: bool = Field(
        True, description="one weight scale per output channel in the dynamic group"
    )
    reduce_range: bool = Field(
        False, description="7-bit weights (x86 CPUs without VNNI if U8S8 saturation hurts)"
    )
    scale_search_images: int = Field(
        0,
        ge=0,
        le=10_000,
        description="fine-tune the static group's activation scales on this many calibration "
        "tensors against the float model's outputs (_scale_search: one sweep in graph order, "
        "each scale times every factor of scale_search_grid, kept where the output error "
        "drops); every variant the tolerance judges is tuned; 0: off",
    )
    scale_search_grid: list[float] = Field(
        default_factory=lambda: [0.8, 0.9, 1.1, 1.25],
        min_length=1,
        description="factors tried on each activation scale by scale_search_images",
    )
    qat_images: int = Field(
        0,
        ge=0,
        le=100_000,
        description="quantization-aware fine-tune (_qat) of the static group's weights, biases "
        "and activation steps on this many calibration tensors, distilling the float model's "
        "outputs (needs torch); every variant the tolerance judges is tuned; 0: off",
    )
    qat_epochs: int = Field(3, ge=1, le=100, description="passes over the qat_images tensors")
    qat_batch: int = Field(16, ge=1, le=1024, description="tensors per qat step")
    qat_lr_weights: float = Field(
        1e-6, gt=0.0, le=1.0, description="Adam's learning rate of the weights and biases"
    )
    qat_lr_scales: float = Field(
        2e-4, gt=0.0, le=1.0, description="Adam's learning rate of the log activation steps"
    )
    qat_held_out: int = Field(
        128,
        ge=0,
        le=10_000,
        description="validation tensors per set on which the report gives the KL divergence "
        "before and after the fine-tune (never trained on)",
    )
    sensitivity: Literal["quantize_one", "keep_one"] = Field(
        "quantize_one",
        description="how a node's sensitivity is measured: output divergence when only it is "
        "quantized (quantize_one) or when only it stays float (keep_one; larger = less error "
        "left, so ranked by the error it removes)",
    )
    rank_by: Literal["sensitivity", "sensitivity_per_mac"] = Field(
        "sensitivity",
        description="order in which the search keeps static nodes float: most sensitive "
        "first, or most sensitive per multiply-accumulate at the first calibration tensor (a "
        "float node's time grows with its MACs: cheap nodes first, for a speed budget); "
        "sensitivity_per_mac needs sensitivity quantize_one",
    )
    keep_float: list[str] = Field(
        default_factory=list,
        description="static nodes kept float whatever the search finds (names as in the "
        "report; an unnamed node is '<op_type>_<index>'), e.g. cheap ones or one known to be "
        "sensitive; the search adds the k most sensitive of the others",
    )
    max_float_nodes: int = Field(
        8,
        ge=0,
        description="give up (PassError) rather than keep more static nodes float than this, "
        "beyond keep_float",
    )
    always_rank: bool = Field(
        False,
        description="measure every node's sensitivity even when the fully quantized model meets "
        "the tolerance (for the report; one quantization and probe per node); by default nodes "
        "are ranked only when some must stay float",
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
        percentile_only(self.calibrate_method, self.percentile, self.percentile_tails)
        if self.qat_images and self.scale_search_images:
            raise ValueError(
                "qat_images and scale_search_images both tune the activation scales; set one "
                "of them to 0"
            )
        if self.rank_by == "sensitivity_per_mac" and self.sensitivity != "quantize_one":
            raise ValueError(
                "rank_by sensitivity_per_mac divides each node's own error by its cost: it "
                "needs sensitivity quantize_one"
            )
        if any(f <= 0 for f in self.scale_search_grid):
            raise ValueError(f"scale_search_grid {self.scale_search_grid}: factors must be > 0")
        return self


@dataclass
class _Plan:
    """What is known while searching: reference outputs, candidates and the report."""

    work: onnx.ModelProto
    candidates: list[str]
    keep: tuple[str, ...]  # keep_float, in graph order
    dynamic_nodes: list[str]
    ref_outputs: list[np.ndarray]  # on the sensitivity tensors
    ref_texts: dict[str, list[str]]  # per validation set
    ref_accuracy: dict[str, float]  # per validation set, %
    sensitivity: list[SensitivityRow] = field(default_factory=list)
    steps: list[ToleranceStep] = field(default_factory=list)
    cache: dict[tuple[tuple[str, ...], bool], onnx.ModelProto] = field(default_factory=dict)
    # scale_search_images: the float model's outputs on those tensors; with it or qat_images,
    # each tuned static model (by its float static nodes) with what the tuning did
    search_ref: list[np.ndarray] | None = None
    qat_ref: tuple[list[np.ndarray], list[np.ndarray]] | None = None  # qat_images: train, held
    tuned: dict[tuple[str, ...], tuple[onnx.ModelProto, ScaleSearchRecord | QatRecord]] = field(
        default_factory=dict
    )


@register(NAME, QuantizeToToleranceOptions, kind="quantize", exact=False, measured=("sensitivity",))
def quantize_to_tolerance(
    model: onnx.ModelProto, options: QuantizeToToleranceOptions, context: PassContext
) -> onnx.ModelProto:
    """Static+dynamic int8, keeping the fewest most sensitive nodes float to meet a tolerance."""
    plan = _prepare(model, options, context)
    out = _attempt(plan, options, context, (), True)
    order = _rank(plan, options, context) if out is None or options.always_rank else []
    if out is not None:
        report = _report(plan, order, 0, True)
    else:
        out, report = _search(plan, order, options, context)
    result = q.finish(out, model)
    kept = [p for p in result.metadata_props if p.key != REPORT_KEY]
    del result.metadata_props[:]
    result.metadata_props.extend(kept)
    result.metadata_props.add(key=REPORT_KEY, value=json.dumps(report.model_dump(mode="json")))
    return result


def _prepare(
    model: onnx.ModelProto, options: QuantizeToToleranceOptions, context: PassContext
) -> _Plan:
    if not context.validation or not all(context.validation.values()):
        raise PassError(
            NAME, "needs labelled validation images from every source (data/<source>/val)"
        )
    if not context.calibration:
        raise PassError(NAME, "needs calibration data, but context.calibration is empty")
    q.reject_quantized(NAME, model)
    q.require_initializer_weights(NAME, model)
    if options.static_op_types and options.static_per_channel and default_opset(model) < 13:
        raise PassError(
            NAME,
            f"static_per_channel needs opset >= 13 (per-axis DequantizeLinear) but the model "
            f"has opset {default_opset(model)}: add convert_opset before this pass, or set "
            "static_per_channel: false",
        )
    work = q.working_copy(model)
    candidates = [n.name for n in work.graph.node if n.op_type in options.static_op_types]
    dynamic_types = {"MatMul" if t == "Gemm" else t for t in options.dynamic_op_types}
    dynamic_types |= {"Gemm"} & set(options.dynamic_op_types)
    dynamic_nodes = [n.name for n in work.graph.node if n.op_type in dynamic_types]
    if not candidates and not dynamic_nodes:
        wanted = [*options.static_op_types, *options.dynamic_op_types]
        raise PassError(NAME, q.no_match_message(work, wanted))
    keep = _kept(options, candidates)
    ref_texts, ref_outputs = _reference(model, options, context)
    return _Plan(
        work=work,
        candidates=candidates,
        keep=keep,
        dynamic_nodes=dynamic_nodes,
        ref_outputs=ref_outputs,
        ref_texts=ref_texts,
        ref_accuracy=_accuracy(ref_texts, context),
    )


def _kept(options: QuantizeToToleranceOptions, candidates: list[str]) -> tuple[str, ...]:
    """keep_float in graph order, each name checked against the static candidates."""
    unknown = [n for n in options.keep_float if n not in candidates]
    if unknown:
        shown = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
        raise PassError(
            NAME,
            f"keep_float names {unknown}, which are not nodes of static_op_types "
            f"{options.static_op_types} (those are: {shown or 'none'}); use those names, or "
            "drop an op type from dynamic_op_types to keep the dynamic group float",
        )
    return tuple(n for n in candidates if n in options.keep_float)


# The float model's texts on the validation sets and its outputs on the probe images depend on
# its bytes, the session settings and those images only: the levers stage, which quantizes the
# same float model once per variant, runs it once (the last few are kept).
_REFERENCE: OrderedDict[str, tuple[dict[str, list[str]], list[np.ndarray]]] = OrderedDict()
_REFERENCE_KEPT = 2


def _reference(
    model: onnx.ModelProto, options: QuantizeToToleranceOptions, context: PassContext
) -> tuple[dict[str, list[str]], list[np.ndarray]]:
    data = model.SerializeToString()
    probe = _probe(context, options)
    h = hashlib.sha256(data)
    h.update(repr(context.runtime).encode())
    for name, items in context.validation.items():
        h.update(name.encode())
        h.update(samples_digest([np.asarray(x, np.float32) for x, _ in items]).encode())
    h.update(samples_digest(probe).encode())
    key = h.hexdigest()
    if key not in _REFERENCE:
        session = make_session(data, context.runtime)
        outputs = [run(session, x) for x in probe]
        _REFERENCE[key] = (_predict(session, model, context), outputs)
        while len(_REFERENCE) > _REFERENCE_KEPT:
            _REFERENCE.popitem(last=False)
    texts, outputs = _REFERENCE[key]
    return {k: list(v) for k, v in texts.items()}, [o.copy() for o in outputs]


def _probe(context: PassContext, options: QuantizeToToleranceOptions) -> list[np.ndarray]:
    return [np.asarray(x, np.float32) for x in context.calibration[: options.sensitivity_images]]


def _predict(session, model: onnx.ModelProto, context: PassContext) -> dict[str, list[str]]:
    spec = modelio.spec(model)
    return {
        name: [
            decode(
                run(session, np.asarray(x, np.float32)), spec.charset, spec.layout, spec.blank
            ).text
            for x, _ in items
        ]
        for name, items in context.validation.items()
    }


def _accuracy(texts: dict[str, list[str]], context: PassContext) -> dict[str, float]:
    return {
        name: 100.0 * float(np.mean(hits(ts, [label for _, label in items], context.scoring)))
        for (name, ts), items in zip(texts.items(), context.validation.values(), strict=True)
    }


def _static_options(
    options: QuantizeToToleranceOptions, exclude: list[str]
) -> QuantizeStaticOptions:
    return QuantizeStaticOptions(
        op_types=list(options.static_op_types),
        nodes_to_exclude=exclude,
        calibrate_method=options.calibrate_method,
        percentile=options.percentile,
        percentile_tails=options.percentile_tails,
        histogram_bins=options.histogram_bins,
        reduce_range=options.reduce_range,
        per_channel=options.static_per_channel,
        calibration_images=options.calibration_images,
        bias_correction_images=options.bias_correction_images,
    )


def _static(
    model: onnx.ModelProto,
    options: QuantizeToToleranceOptions,
    context: PassContext,
    exclude: list[str],
) -> onnx.ModelProto:
    """quantize_static on the static group, its errors reported as this pass's."""
    try:
        return quantize_static(model, _static_options(options, exclude), context)
    except PassError as e:
        raise PassError(
            NAME,
            f"quantizing static_op_types {options.static_op_types} failed ({e}); its "
            "per_channel is static_per_channel here",
        ) from e


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
        out = _static(out, options, context, list(float_static))
        if options.scale_search_images or options.qat_images:
            out = _tuned(plan, out, options, context, key[0])
    if dynamic and plan.dynamic_nodes:
        out = _dynamic(out, plan.work, options, context, None)
    plan.cache[key] = out
    return out


def _tuned(
    plan: _Plan,
    model: onnx.ModelProto,
    options: QuantizeToToleranceOptions,
    context: PassContext,
    float_static: tuple[str, ...],
) -> onnx.ModelProto:
    """The static model with its activation scales tuned (_scale_search) or fine-tuned with
    its weights (_qat) against the float model, once per set of float static nodes."""
    if float_static not in plan.tuned:
        where = f"{NAME} ({len(float_static)} float)"
        tune = _tune_scales if options.scale_search_images else _tune_qat
        plan.tuned[float_static] = tune(plan, model, options, context, where)
    return plan.tuned[float_static][0]


def _tune_scales(
    plan: _Plan, model: onnx.ModelProto, options: QuantizeToToleranceOptions,
    context: PassContext, where: str,
) -> tuple[onnx.ModelProto, ScaleSearchRecord]:  # fmt: skip
    xs = [np.asarray(x, np.float32) for x in context.calibration[: options.scale_search_images]]
    if plan.search_ref is None:
        session = make_session(plan.work.SerializeToString(), context.runtime)
        plan.search_ref = [run(session, x).astype(np.float64) for x in xs]
    return scale_search.search(
        model, xs, plan.search_ref, context.runtime, options.scale_search_grid, where
    )


def _tune_qat(
    plan: _Plan, model: onnx.ModelProto, options: QuantizeToToleranceOptions,
    context: PassContext, where: str,
) -> tuple[onnx.ModelProto, QatRecord]:  # fmt: skip
    qat.check_supported(NAME, model)
    xs = [np.asarray(x, np.float32) for x in context.calibration[: options.qat_images]]
    held = [
        np.asarray(x, np.float32)
        for items in context.validation.values()
        for x, _ in items[: options.qat_held_out]
    ]
    if plan.qat_ref is None:  # the float model's outputs, once for every tuned k
        session = make_session(plan.work.SerializeToString(), context.runtime)
        plan.qat_ref = [run(session, x) for x in xs], [run(session, x) for x in held]
    return qat.finetune(
        model, plan.work, xs, held, plan.qat_ref, options, f"{where}: qat on {len(xs)} tensors"
    )


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
    args = qd.ort_arguments(model, dyn)
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


def _rel_mse(
    plan: _Plan, model: onnx.ModelProto, context: PassContext, options: QuantizeToToleranceOptions
) -> float:
    """Output error relative to the input model's on the probe tensors (3 significant digits)."""
    return q.rel_mse(model, _probe(context, options), plan.ref_outputs, context.runtime)


def _rank(plan: _Plan, options: QuantizeToToleranceOptions, context: PassContext) -> list[str]:
    """Static candidates but keep_float, most sensitive first; every node's number goes into
    the report."""
    scores: dict[str, float] = {}
    for node in (c for c in plan.candidates if c not in plan.keep):
        others = [c for c in plan.candidates if c != node]
        exclude = others if options.sensitivity == "quantize_one" else [node, *plan.keep]
        # keep_one with a single candidate leaves nothing to quantize: the float model itself
        quantized = (
            _static(plan.work, options, context, exclude)
            if set(plan.candidates) - set(exclude)
            else plan.work
        )
        scores[node] = _rel_mse(plan, quantized, context, options)
    if options.sensitivity == "keep_one" and scores:
        # keeping the most harmful node float leaves the least error behind
        scores = {n: -s for n, s in scores.items()}
    macs = _macs(plan, context, list(scores)) if options.rank_by != "sensitivity" else {}
    # a node without dot products costs ~nothing float: 1 MAC keeps the ratio finite
    key = {n: s / max(macs.get(n, 1), 1) for n, s in scores.items()}
    order = sorted(scores, key=lambda n: -key[n])  # stable: ties keep graph order
    ops = {n.name: n.op_type for n in plan.work.graph.node}
    for node in order:
        plan.sensitivity.append(
            SensitivityRow(
                node=node,
                op_type=ops[node],
                group="static",
                rel_mse=abs(scores[node]),
                macs=macs.get(node),
            )
        )
    for node in plan.dynamic_nodes:
        one = _dynamic(plan.work, plan.work, options, context, [node])
        plan.sensitivity.append(
            SensitivityRow(
                node=node,
                op_type=ops[node],
                group="dynamic",
                rel_mse=_rel_mse(plan, one, context, options),
            )
        )
    return order


def _macs(plan: _Plan, context: PassContext, nodes: list[str]) -> dict[str, int]:
    """Each node's multiply-accumulates on the first calibration tensor."""
    shapes = tensor_shapes(plan.work, np.asarray(context.calibration[0], np.float32))
    return {n.name: node_macs(n, shapes) for n in plan.work.graph.node if n.name in nodes}


def _evaluate(
    plan: _Plan, model: onnx.ModelProto, context: PassContext
) -> dict[str, dict[str, float]]:
    """Per validation set: accuracy (%) and agreement (share) with the input model."""
    session = make_session(model.SerializeToString(), context.runtime)
    texts = _predict(session, plan.work, context)
    accuracy = _accuracy(texts, context)
    return {
        name: {
            "accuracy": accuracy[name],
            "agreement": float(np.mean(hits(ts, plan.ref_texts[name], context.scoring))),
        }
        for name, ts in texts.items()
    }


def _search(
    plan: _Plan, order: list[str], options: QuantizeToToleranceOptions, context: PassContext
) -> tuple[onnx.ModelProto, ToleranceReport]:
    """Smallest k of float static nodes meeting the tolerance on every set; then, the dynamic
    group float, the smallest k again."""
    ks = range(min(options.max_float_nodes, len(order)) + 1)
    tries = [(k, True) for k in ks]
    if plan.dynamic_nodes:
        tries += [(k, False) for k in ks]
    done = {(s.k, s.dynamic) for s in plan.steps}
    for k, dynamic in tries:
        if (k, dynamic) in done:
            continue
        model = _attempt(plan, options, context, tuple(order[:k]), dynamic)
        if model is not None:
            return model, _report(plan, order, k, dynamic)
    raise PassError(NAME, _failure(plan, options))


def _attempt(
    plan: _Plan,
    options: QuantizeToToleranceOptions,
    context: PassContext,
    searched: tuple[str, ...],
    dynamic: bool,
) -> onnx.ModelProto | None:
    """The variant with keep_float and `searched` float if it meets the tolerance on every
    set; each evaluated variant is a step."""
    model = _build(plan, options, context, plan.keep + searched, dynamic)
    if not q.quantized_ops(model):
        return None  # everything float: not a quantization
    sets = _evaluate(plan, model, context)
    accepted = all(_within(plan, options, name, r) for name, r in sets.items())
    plan.steps.append(ToleranceStep(k=len(searched), dynamic=dynamic, sets=sets, accepted=accepted))
    return model if accepted else None


def _within(
    plan: _Plan, options: QuantizeToToleranceOptions, name: str, r: dict[str, float]
) -> bool:
    # the epsilon keeps "exactly at the limit" accepted despite float rounding
    return (
        plan.ref_accuracy[name] - r["accuracy"] <= options.max_accuracy_drop_pts + 1e-9
        and r["agreement"] >= options.min_agreement - 1e-9
    )


def _report(plan: _Plan, order: list[str], k: int, dynamic: bool) -> ToleranceReport:
    float_static = [*plan.keep, *order[:k]]
    float_nodes = float_static + ([] if dynamic else list(plan.dynamic_nodes))
    ranks = {s.node: (i, s.rel_mse) for i, s in enumerate(plan.sensitivity)}
    why = {n: "keep_float" for n in plan.keep}
    why |= {n: f"sensitivity rank {ranks[n][0]}, rel_mse {ranks[n][1]:.3g}" for n in order[:k]}
    if not dynamic:
        why |= {n: "dynamic group kept float to meet the tolerance" for n in plan.dynamic_nodes}
    quantized = set(plan.candidates) - set(float_static) | (
        set(plan.dynamic_nodes) if dynamic else set()
    )
    rows = [s.model_copy(update={"quantized": s.node in quantized}) for s in plan.sensitivity]
    tuned = plan.tuned.get(tuple(sorted(float_static)))
    record = tuned[1] if tuned else None
    return ToleranceReport(
        reference=plan.ref_accuracy,
        sensitivity=rows,
        steps=plan.steps,
        float_nodes=float_nodes,
        why=why,
        scale_search=record if isinstance(record, ScaleSearchRecord) else None,
        qat=record if isinstance(record, QatRecord) else None,
    )


def _failure(plan: _Plan, options: QuantizeToToleranceOptions) -> str:
    if not plan.steps:
        return "no quantized variant could be built; check static_op_types and dynamic_op_types"

    def worst(step: ToleranceStep) -> tuple[float, float]:
        drops = [plan.ref_accuracy[s] - r["accuracy"] for s, r in step.sets.items()]
        return max(drops), min(r["agreement"] for r in step.sets.values())

    best = min(plan.steps, key=lambda s: (worst(s)[0], -worst(s)[1]))
    shown = "; ".join(
        f"{name}: accuracy {r['accuracy']:.2f} % (reference {plan.ref_accuracy[name]:.2f} %), "
        f"agreement {r['agreement']:.3f}"
        for name, r in best.sets.items()
    )
    beyond = f"beyond keep_float {list(plan.keep)} " if plan.keep else ""
    more = "more " if plan.keep else ""
    dynamic = "" if best.dynamic else " and the dynamic group float"
    return (
        f"no variant with at most max_float_nodes={options.max_float_nodes} float static nodes "
        f"{beyond}met the tolerance (max_accuracy_drop_pts {options.max_accuracy_drop_pts}, "
        f"min_agreement {options.min_agreement}) on every validation set; best, with {best.k} "
        f"{more}float static nodes{dynamic}: {shown}; "
        "relax the tolerance, raise max_float_nodes, or use more validation images"
    )
