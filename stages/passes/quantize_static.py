"""Static int8 quantization with onnxruntime, calibrated on context.calibration.

Before: Conv(x, W, b) in float32.
After:  qdq:       x -> QuantizeLinear -> DequantizeLinear -> Conv(DQ(W_int8), DQ(b_int32))
                   -> QuantizeLinear -> DequantizeLinear (onnxruntime fuses the pattern into an
                   int8 conv when the session loads).
        qoperator: QuantizeLinear -> QLinearConv -> DequantizeLinear.
        Activation ranges come from running the calibration tensors through the float model,
        rounded outward to 8 mantissa bits (`snap`) so the build CPU's float noise cannot
        change the scales the model file holds.
Exact: no; ddddocr's model, Conv-only: ~96 % of frames keep their argmax class on captchas.

Not done here:
- LSTM/GRU: onnxruntime quantizes them dynamically only (DynamicQuantizeLSTM); asking for them
  raises PassError pointing to quantize_dynamic.
- onnxruntime's quant_pre_process: its symbolic shape inference needs sympy (not a dependency)
  and its optimizer step is a graph rewrite that belongs to explicit cleanup passes. The
  quantizer's own onnx shape inference suffices: Conv/Gemm weights are initializers.
Checked: the result must pass onnx.checker, load in onnxruntime and run the first calibration
tensor. per_channel=True in qdq format needs opset >= 13 (per-axis DequantizeLinear); on an
opset-12 model (ddddocr's) it is refused before calibrating, naming convert_opset.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import onnx
import onnxruntime.quantization as ort_quant
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import PassError
from ..registry import PassContext, register
from . import _ort_quant as q
from ._bias_correction import correct_biases
from .convert_opset import default_opset

NAME = "quantize_static"
_FORMATS = {"qdq": ort_quant.QuantFormat.QDQ, "qoperator": ort_quant.QuantFormat.QOperator}
_SUPPORTED = {"qdq": set(QDQRegistry), "qoperator": set(QLinearOpsRegistry)}
_METHODS = {
    "minmax": ort_quant.CalibrationMethod.MinMax,
    "entropy": ort_quant.CalibrationMethod.Entropy,
    "percentile": ort_quant.CalibrationMethod.Percentile,
}
CalibrateMethod = Literal["minmax", "entropy", "percentile"]  # the keys of _METHODS
PercentileTails = Literal["symmetric", "separate"]
DEFAULT_PERCENTILE = 99.999
# these calibrators stack every run's activations into one array, so shapes must agree
_HISTOGRAM = {"entropy", "percentile"}


class QuantizeStaticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq",
        description="qdq: Q/DQ pairs around float ops (onnxruntime's CPU default); "
        "qoperator: QLinearConv and friends",
    )
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="activation data type; uint8 suits x86 CPUs (U8S8 kernels)"
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="weight data type")
    per_channel: bool = Field(
        False, description="one weight scale per output channel; qdq needs opset >= 13 for it"
    )
    reduce_range: bool = Field(
        False,
        description=(
            "quantize weights to 7 bits; set true on x86 CPUs without VNNI (AVX2 only) if U8S8 "
            "saturation hurts accuracy"
        ),
    )
    calibrate_method: CalibrateMethod = Field(
        "minmax", description="how activation ranges are chosen from the calibration runs"
    )
    percentile: float = Field(
        DEFAULT_PERCENTILE,
        gt=90.0,
        le=100.0,
        description="percentile of |activation| kept in range (of the signed values, split over "
        "both tails, with percentile_tails: separate); only for calibrate_method percentile",
    )
    percentile_tails: PercentileTails = Field(
        "symmetric",
        description="symmetric: the range is +-the percentile of |activation| (onnxruntime's "
        "default); separate: each tail of the signed values loses (100 - percentile) / 2 %, so "
        "a skewed tensor (a convolution's output before its activation) keeps the side it "
        "uses; only for calibrate_method percentile",
    )
    histogram_bins: int = Field(
        2048,
        ge=128,
        le=65536,
        description="histogram bins of the entropy and percentile calibrators; entropy searches "
        "thresholds only between 128 quantized bins and this many, so onnxruntime's entropy "
        "default (128 bins) would return the min/max range",
    )
    op_types: list[str] = Field(
        default_factory=lambda: ["Conv"],
        min_length=1,
        description="op types to quantize (LSTM/GRU are dynamic-only: use quantize_dynamic)",
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="node names to keep in float"
    )
    calibration_images: int = Field(
        32, ge=1, le=100_000, description="use at most this many calibration tensors"
    )
    bias_correction_images: int = Field(
        0,
        ge=0,
        le=10_000,
        description="empirical bias correction: shift each quantized node's int32 bias by the "
        "float model's minus the quantized model's mean output per channel on the first this "
        "many calibration tensors, node by node in graph order (qdq only); 0: off",
    )
    pad_width: Literal["auto", "none"] = Field(
        "auto",
        description=(
            "auto: for entropy/percentile, right-pad every calibration tensor to the widest one "
            "by edge replication, because onnxruntime's histogram calibrators fail on "
            "varying widths; minmax never needs it. none: feed tensors as they are"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError(
                "activation_type int8 with weight_type uint8 is not supported by onnxruntime; "
                "use weight_type: int8"
            )
        percentile_only(self.calibrate_method, self.percentile, self.percentile_tails)
        if self.bias_correction_images and self.quant_format != "qdq":
            raise ValueError(
                "bias_correction_images corrects qdq models' int32 biases; set quant_format: qdq "
                "or bias_correction_images: 0"
            )
        return self


def percentile_only(method: str, percentile: float, tails: str) -> None:
    """Refuse percentile settings that another calibrate_method would silently ignore. Compared
    with the defaults, not model_fields_set: a resolved recipe (recipe.json) lists every field,
    and must load back."""
    given = [f for f, on in (("percentile", percentile != DEFAULT_PERCENTILE),
                             ("percentile_tails", tails != "symmetric")) if on]  # fmt: skip
    if given and method != "percentile":
        fields = " and ".join(given)
        verb = "is" if len(given) == 1 else "are"
        raise ValueError(
            f"{fields} {verb} only used with calibrate_method: percentile, not {method}; "
            f"remove {fields} or change calibrate_method"
        )


@register(NAME, QuantizeStaticOptions, kind="quantize", exact=False)
def quantize_static(
    model: onnx.ModelProto, options: QuantizeStaticOptions, context: PassContext
) -> onnx.ModelProto:
    """Quantize weights and activations of `op_types` to 8 bits with calibrated ranges."""
    q.reject_quantized(NAME, model)
    q.require_initializer_weights(NAME, model)
    _check_op_types(options)
    _check_opset(options, model)
    work = q.working_copy(model)
    q.check_node_names(NAME, work, "nodes_to_exclude", options.nodes_to_exclude)
    if not q.select(work, options.op_types, options.nodes_to_exclude, None):
        raise PassError(NAME, q.no_match_message(work, options.op_types))
    samples = _calibration(context, options)
    reader = _Reader(_input_name(work), samples)
    args = _ort_arguments(options, reader)
    digest = samples_digest(samples)
    out = q.run_quantizer(
        NAME,
        work,
        lambda src, dst: _quantize(src, dst, args, _calibrator_options(options), digest),
        fix=_failure_advice(options, samples),
    )
    if not q.quantized_ops(out):
        raise PassError(NAME, f"onnxruntime quantized no node of op_types {options.op_types}")
    if options.bias_correction_images:
        images = context.calibration[: options.bias_correction_images]
        out = correct_biases(out, work, [np.asarray(x, np.float32) for x in images])
    first = np.asarray(context.calibration[0], np.float32)  # unpadded: a real width must run
    return q.check_and_finish(NAME, out, model, context, first, _load_advice(options))


def _ort_arguments(options: QuantizeStaticOptions, reader: _Reader) -> dict[str, Any]:
    """The one place the typed options become onnxruntime's quantize_static arguments."""
    extra: dict[str, Any] = {
        # asymmetric ranges keep the full 8 bits for SiLU outputs, which are almost all >= 0
        "ActivationSymmetric": False,
        # zero-point-0 weights: what onnxruntime's int8 kernels are fastest with
        "WeightSymmetric": True,
    }
    return {
        "calibration_data_reader": reader,
        "quant_format": _FORMATS[options.quant_format],
        "op_types_to_quantize": list(options.op_types),
        "per_channel": options.per_channel,
        "reduce_range": options.reduce_range,
        "activation_type": q.QUANT_TYPES[options.activation_type],
        "weight_type": q.QUANT_TYPES[options.weight_type],
        "nodes_to_exclude": list(options.nodes_to_exclude),
        "calibrate_method": _METHODS[options.calibrate_method],
        "extra_options": extra,
    }


RANGE_BITS = 8  # mantissa bits activation ranges keep: steps of 0.4-0.8 %, far above float noise


def snap(values: np.ndarray, outward_up: bool) -> np.ndarray:
    """`values` rounded outward (up for a range's top, down for its bottom) to RANGE_BITS
    mantissa bits, so the build CPU's float rounding (1e-6 relative) almost never moves a
    range, and never narrows one (no new clipping)."""
    mantissa, exponent = np.frexp(np.asarray(values, np.float64))
    steps = mantissa * 2.0**RANGE_BITS
    steps = np.ceil(steps) if outward_up else np.floor(steps)
    return np.ldexp(steps / 2.0**RANGE_BITS, exponent).astype(np.asarray(values).dtype)


def _calibrator_options(options: QuantizeStaticOptions) -> dict[str, Any]:
    """Options of onnxruntime's calibrator. quantize_static forwards no bin count, so its entropy
    calibration keeps its 128-bin default, whose one candidate threshold is the min/max range:
    the calibrator is driven here instead."""
    if options.calibrate_method == "minmax":
        return {}
    out: dict[str, Any] = {"num_bins": options.histogram_bins}
    if options.calibrate_method == "percentile":
        out["percentile"] = options.percentile
        out["symmetric"] = options.percentile_tails == "symmetric"
    return out


# Calibration is most of a static quantization's time, and its ranges depend on the float
# model, the op types, the calibrator and the images only: onnxruntime's calibrator records
# every op_types node, whatever nodes_to_exclude says. So a pass quantizing one model many
# times (quantize_to_tolerance ranking its nodes) calibrates it once: the snapped ranges of
# the last few calibrations are kept, as the cache text onnxruntime reads.
_RANGES: OrderedDict[str, str] = OrderedDict()
_RANGES_KEPT = 4


def samples_digest(samples: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in samples:
        h.update(f"{x.dtype}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _ranges_key(src: str, args: dict[str, Any], calibrator: dict[str, Any], images: str) -> str:
    what = [sorted(args["op_types_to_quantize"]), str(args["calibrate_method"]), calibrator, images]
    h = hashlib.sha256(Path(src).read_bytes())
    h.update(json.dumps(what, sort_keys=True).encode())
    return h.hexdigest()


def _quantize(
    src: str, dst: str, args: dict[str, Any], calibrator: dict[str, Any], images: str
) -> None:
    """quantize_static from snapped activation ranges: calibrate (or reuse the ranges of the
    same calibration), round the ranges outward (`snap`), write them as onnxruntime's
    calibration cache, quantize from the cache alone.

    The ranges come from float runs on the build machine's kernels; unsnapped, AVX2 and
    AVX-512 builds would write scales differing in the last bits."""
    cache = Path(dst).parent / "ranges.json"
    key = _ranges_key(src, args, calibrator, images)
    if key not in _RANGES:
        _calibrate(src, cache, args, calibrator)
        _RANGES[key] = cache.read_text()
        while len(_RANGES) > _RANGES_KEPT:
            _RANGES.popitem(last=False)
    else:
        cache.write_text(_RANGES[key])
    again = {**args, "calibration_data_reader": None}
    ort_quant.quantize_static(src, dst, calibration_cache_path=cache, **again)


def _calibrate(src: str, cache: Path, args: dict[str, Any], calibrator: dict[str, Any]) -> None:
    """Run onnxruntime's calibrator and write its snapped ranges to `cache`."""
    work = cache.parent
    cal = create_calibrator(
        Path(src),
        args["op_types_to_quantize"],
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=args["calibrate_method"],
        extra_options=calibrator,
    )
    cal.collect_data(args["calibration_data_reader"])
    ranges = cal.compute_data()
    del cal
    for data in ranges.data.values():
        data.lowest = snap(data.lowest, outward_up=False)
        data.highest = snap(data.highest, outward_up=True)
    save_tensors_data(ranges, cache)


class _Reader(ort_quant.CalibrationDataReader):
    """Feeds each calibration tensor once, as onnxruntime's calibrators expect."""

    def __init__(self, input_name: str, samples: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: x} for x in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _check_opset(options: QuantizeStaticOptions, model: onnx.ModelProto) -> None:
    """Refuse per-channel QDQ below opset 13 before any calibration: DequantizeLinear gained
    its `axis` in opset 13, so onnxruntime would write a graph that nothing can load."""
    opset = default_opset(model)
    if options.per_channel and options.quant_format == "qdq" and opset < 13:
        raise PassError(
            NAME,
            f"per_channel needs opset >= 13 in qdq format (per-axis DequantizeLinear) but the "
            f"model has opset {opset}: add convert_opset before this pass, or set per_channel: "
            "false",
        )


def _check_op_types(options: QuantizeStaticOptions) -> None:
    supported = _SUPPORTED[options.quant_format]
    bad = [t for t in options.op_types if t not in supported]
    if not bad:
        return
    hint = ""
    if {"LSTM", "GRU"} & set(bad):
        hint = "LSTM/GRU are quantized dynamically only in onnxruntime: use quantize_dynamic; "
    raise PassError(
        NAME,
        f"op_types {bad} cannot be statically quantized in {options.quant_format} format; "
        f"{hint}supported: {sorted(supported)}",
    )


def _calibration(context: PassContext, options: QuantizeStaticOptions) -> list[np.ndarray]:
    samples = [np.asarray(x, np.float32) for x in context.calibration[: options.calibration_images]]
    if not samples:
        raise PassError(
            NAME,
            "needs calibration data, but context.calibration is empty; add images to "
            "data/calib or use quantize_dynamic",
        )
    if options.pad_width == "auto" and options.calibrate_method in _HISTOGRAM:
        width = max(x.shape[-1] for x in samples)
        # edge replication continues the background instead of inventing black/white columns
        return [
            np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])], mode="edge")
            for x in samples
        ]
    return samples


def _input_name(model: onnx.ModelProto) -> str:
    weights = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in weights]
    if len(names) != 1:
        raise PassError(NAME, f"calibration feeds one image tensor, but the model has {names}")
    return names[0]


def _failure_advice(options: QuantizeStaticOptions, samples: list[np.ndarray]) -> str:
    widths = {x.shape[-1] for x in samples}
    if options.calibrate_method in _HISTOGRAM and options.pad_width == "none" and len(widths) > 1:
        return (
            f"calibrate_method {options.calibrate_method} cannot merge calibration tensors of "
            f"widths {sorted(widths)}; set pad_width: auto or calibrate_method: minmax"
        )
    return "change calibrate_method, quant_format or op_types"


def _load_advice(options: QuantizeStaticOptions) -> tuple[str, str]:
    """(cause, fix) for a result onnxruntime refuses: per_channel first, it is the usual one
    (its opset-12 QDQ trap is refused before calibrating, by _check_opset)."""
    if options.per_channel:
        return "per_channel=True", "set per_channel: false"
    return (
        f"quant_format={options.quant_format}, op_types {options.op_types}",
        "try the other quant_format or remove the op type from op_types",
    )
