"""`preprocess()` as an ONNX graph, so a bundle's model can take decoded pixels.

App developers on Android or in JavaScript cannot reproduce Pillow's Lanczos resize, so the
bundle ships the preprocessing inside the model: input `pixels`, uint8 [H, W, C] with C = 1
(gray), 3 (RGB) or 4 (RGBA, straight alpha). The output equals `preprocess(arr, spec)` bit for
bit for the same array. Only `backend="pillow"` with lanczos, bilinear or area is reproduced.
The graph does not refuse images larger than `spec.max_pixels`; the host must.

How each step stays exact:
- Pillow's 8-bit resampler (libImaging/Resample.c) is integer arithmetic. The graph builds
  each output's window of coefficients from the dynamic sizes in float64, in C's operation
  order, sums the window left to right (CumSum), and rounds to Pillow's 22-bit fixed point.
  Pixels times coefficients are then summed in int32, as in C, so the order of the sum
  does not matter.
- The one op that is not correctly rounded is onnxruntime's float64 Sin (lanczos only),
  within about 5e-16 of libm. That moves a fixed-point coefficient only when it lies within
  ~1e-9 of a rounding tie.
- Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice what
  the width does (python-pillow/Pillow#9549). An If runs that order's two passes only
  (running both orders and picking one with arithmetic cost 0.45 ms per captcha against 0.30).
- A pass whose size does not change is the identity in fixed point, so no If skips it.
Cost: a pass gathers [K, out, taps, other axis] int32, taps = 2 * ceil(support * scale) + 1.
Shrinking a large photo to 64 px high holds about 12x its samples in int32 for lanczos.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ocr_bundles_runtime.preprocess import MIN_WIDTH, Preprocess

from . import modelio

__all__ = ["attach", "pixels_graph", "unsupported"]

INPUT = "pixels"
PREFIX = "pixels/"
MIN_OPSET = 12  # Min and Clip on integers, GreaterOrEqual and LessOrEqual appear in 12
MAX_OPSET = 24  # the newest default-domain opset the tests run
SUPPORT = {"lanczos": 3.0, "bilinear": 1.0, "area": 0.5}  # Pillow's LANCZOS, BILINEAR, BOX
PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
LUMA = (19595, 38470, 7471)  # Convert.c: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16

D, F, I32, I64 = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def unsupported(spec: Preprocess) -> str | None:
    """Why the graph cannot reproduce `spec` (e.g. backend 'opencv', 'nearest'), or None."""
    if spec.backend != "pillow":
        return f"backend {spec.backend!r}: the pixel graph reproduces only backend 'pillow'"
    if spec.interpolation not in SUPPORT:
        supported = ", ".join(SUPPORT)
        return f"interpolation {spec.interpolation!r}: the pixel graph supports {supported}"
    return None


class _Builder:
    """Nodes and constants named under one prefix, so they cannot clash with a model's."""

    def __init__(self, prefix: str = PREFIX, outer: _Builder | None = None) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        # a branch's constants are the main graph's initializers, read from the outer scope
        self.inits: list[onnx.TensorProto] = outer.inits if outer else []
        self._consts: dict[tuple[Any, ...], str] = outer._consts if outer else {}

    def branch(self, tag: str) -> _Builder:
        """A builder for an If branch: its nodes apart, its names under prefix + tag."""
        return _Builder(f"{self.prefix}{tag}/", self)

    def subgraph(self, output: str) -> onnx.GraphProto:
        """This branch's nodes as a graph returning `output`, int32 [K, H, W]."""
        value = helper.make_tensor_value_info(output, I32, [None] * 3)
        return helper.make_graph(self.nodes, self.prefix.rstrip("/"), [], [value])

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = f"{self.prefix}{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out or name], name, **attrs))
        return out or name

    def const(self, value: Any, dtype: int) -> str:
        arr = np.asarray(value, helper.tensor_dtype_to_np_dtype(dtype))
        key = (dtype, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"{PREFIX}c{len(self._consts)}"
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", cond, a, b)

    def vec(self, scalar: str) -> str:
        """A 0-d tensor as shape [1] (Reshape rather than Unsqueeze: its axes moved in opset 13)."""
        return self.op("Reshape", scalar, self.const([1], I64))


def pixels_graph(spec: Preprocess, opset: int, output: str = "pixels_tensor") -> onnx.ModelProto:
    """A model: input 'pixels' uint8 [H, W, C] -> float32 [1, spec.channels, spec.height, W']."""
    reason = unsupported(spec)
    if reason:
        raise ValueError(reason)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    b = _Builder()
    x, h, w = _rgb(b, INPUT)
    gray_first = spec.channels == 1 and spec.grayscale == "before_resize"
    if gray_first:
        x = _luma(b, x)
    out_w = _target_width(b, h, w, spec)
    x = _resize(b, x, (h, w), (b.const(spec.height, I64), out_w), spec.interpolation)
    if spec.channels == 1 and not gray_first:
        x = _luma(b, x)
    if spec.channels == 3 and spec.channel_order == "bgr":
        x = b.op("Gather", x, b.const([2, 1, 0], I64), axis=0)
    _finish(b, _normalize(b, x, spec), out_w, spec, output)
    return _model(b, spec, opset, output)


def _model(b: _Builder, spec: Preprocess, opset: int, output: str) -> onnx.ModelProto:
    dims = ["pixels_height", "pixels_width", "pixels_channels"]
    fixed = bool(spec.max_width and spec.pad_to_width and spec.pad_to_width >= spec.max_width)
    width = spec.pad_to_width if fixed else f"{output}_width"  # else it varies per image
    graph = helper.make_graph(
        b.nodes,
        "pixels",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info(output, F, [1, spec.channels, spec.height, width])],
        b.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _rgb(b: _Builder, pixels: str) -> tuple[str, str, str]:
    """[3, H, W] int32 RGB with alpha composited on white, plus H and W (int64 scalars).

    Gray input is repeated to 3 channels: each channel resizes alone in Pillow, and the luma
    of R = G = B = v is v, so every later step gives what gray input gives in preprocess().
    Planes come first so channel Gathers and broadcasts run over whole planes (fast in ORT)."""
    shape = b.op("Shape", pixels)
    h, w, c = (b.op("Gather", shape, b.const(i, I64)) for i in range(3))
    planes = b.op("Transpose", pixels, perm=[2, 0, 1])
    last = b.op("Sub", c, b.const(1, I64))
    rgb = b.op("Gather", planes, b.op("Min", b.const([0, 1, 2], I64), last), axis=0)
    a = b.op("Gather", planes, b.op("Min", b.const([3], I64), last), axis=0)
    # without an alpha plane a = 255, so alpha = 1 and the composite below is exact: a no-op
    has_alpha = b.op("Cast", b.op("Equal", c, b.const(4, I64)), to=F)
    opaque = b.op("Mul", b.op("Sub", b.const(1.0, F), has_alpha), b.const(255.0, F))
    a = b.op("Add", b.op("Mul", b.op("Cast", a, to=F), has_alpha), opaque)
    alpha = b.op("Div", a, b.const(255.0, F))
    # _composite_white in float32: rint(rgb * alpha + 255 * (1 - alpha))
    white = b.op("Mul", b.op("Sub", b.const(1.0, F), alpha), b.const(255.0, F))
    mixed = b.op("Add", b.op("Mul", b.op("Cast", rgb, to=F), alpha), white)
    return b.op("Cast", b.op("Round", mixed), to=I32), h, w


def _luma(b: _Builder, x: str) -> str:
    """Pillow's RGB -> L on [3, ...] int32: exact, the sum stays below 2^24."""
    r, g, bl = (
        b.op("Mul", b.op("Gather", x, b.const([i], I64), axis=0), b.const(k, I32))
        for i, k in enumerate(LUMA)
    )
    total = b.op("Add", b.op("Add", b.op("Add", r, g), bl), b.const(0x8000, I32))
    return b.op("Div", total, b.const(1 << 16, I32))  # non-negative, so Div is >> 16


def _target_width(b: _Builder, h: str, w: str, spec: Preprocess) -> str:
    """target_width() in float64: int(w * (height / h) * width_scale), at least MIN_WIDTH.

    Clamping before the truncating Cast is the same as after it: int() is monotone and
    both bounds are integers."""
    ratio = b.op("Div", b.const(float(spec.height), D), b.op("Cast", h, to=D))
    width = b.op("Mul", b.op("Mul", b.op("Cast", w, to=D), ratio), b.const(spec.width_scale, D))
    width = b.op("Max", width, b.const(float(MIN_WIDTH), D))
    if spec.max_width:
        width = b.op("Min", width, b.const(float(spec.max_width), D))
    return b.op("Cast", width, to=I64)


def _resize(b: _Builder, x: str, size: tuple[str, str], out: tuple[str, str], how: str) -> str:
    """Pillow's two-pass resize of [K, H, W] int32 to [K, out_h, out_w].

    An If picks the pass order: no per-element Gather transposes conditionally. A pass
    resamples the middle axis, so its Gather copies whole rows, and a MatMul sums the taps:
    ORT's Gather on the last axis and its ReduceSum are several times slower."""
    (h, w), (out_h, out_w) = size, out
    rows, cols = _coeffs(b, h, out_h, how), _coeffs(b, w, out_w, how)
    hb, vb = b.branch("h_first"), b.branch("v_first")
    h_first = _pass(hb, _swap(hb, _pass(hb, _swap(hb, x), cols)), rows)
    v_first = _swap(vb, _pass(vb, _swap(vb, _pass(vb, x, rows)), cols))
    # ImagingResampleInner: vertical first iff in_h - out_h > 0 and > 2 * (in_w - out_w)
    shrink_h = b.op("Sub", h, out_h)
    shrink_w2 = b.op("Mul", b.op("Sub", w, out_w), b.const(2, I64))
    zero = b.const(0, I64)
    pick = b.op("And", b.op("Greater", shrink_h, zero), b.op("Greater", shrink_h, shrink_w2))
    return b.op("If", pick, then_branch=vb.subgraph(v_first), else_branch=hb.subgraph(h_first))


def _swap(b: _Builder, x: str) -> str:
    return b.op("Transpose", x, perm=[0, 2, 1])


def _pass(b: _Builder, x: str, kernel: tuple[str, str]) -> str:
    """One resampling pass over the middle axis: [K, n, C] -> [K, m, C]."""
    index, coef = kernel
    taps = b.op("Gather", x, index, axis=1)  # [K, m, taps, C]: whole rows copied
    row = b.op("Reshape", coef, b.const([0, 1, -1], I64))  # [m, 1, taps], broadcast over K
    summed = b.op("MatMul", row, taps)  # [K, m, 1, C], int32 like C's sum: exact in any order
    return _fixed(b, b.op("Reshape", summed, b.const([0, 0, -1], I64)))


def _coeffs(b: _Builder, n: str, m: str, how: str) -> tuple[str, str]:
    """precompute_coeffs + normalize_coeffs_8bpc for n -> m: per output, the input index of
    each of `taps` window slots (int64 [m, taps]) and Pillow's int32 coefficient for it."""
    n_d, m_d, half = b.op("Cast", n, to=D), b.op("Cast", m, to=D), b.const(0.5, D)
    scale = b.op("Div", n_d, m_d)
    filterscale = b.op("Max", scale, b.const(1.0, D))
    support = b.op("Mul", b.const(SUPPORT[how], D), filterscale)
    ss = b.op("Div", b.const(1.0, D), filterscale)
    taps = b.op("Add", b.op("Mul", b.op("Ceil", support), b.const(2.0, D)), b.const(1.0, D))
    xx = b.op("Cast", b.op("Range", b.const(0, I64), m, b.const(1, I64)), to=D)
    center = b.op("Reshape", b.op("Mul", b.op("Add", xx, half), scale), b.const([-1, 1], I64))
    # (int) truncates toward zero; Floor differs only below 0, where the clamp to 0 follows
    lo = b.op("Floor", b.op("Add", b.op("Sub", center, support), half))
    xmin = b.op("Max", lo, b.const(0.0, D))
    xmax = b.op("Min", b.op("Floor", b.op("Add", b.op("Add", center, support), half)), n_d)
    slot = b.op("Range", b.const(0.0, D), taps, b.const(1.0, D))
    j = b.op("Add", xmin, slot)  # [m, taps]: x + xmin in C
    arg = b.op("Mul", b.op("Add", b.op("Sub", j, center), half), ss)
    weights = b.where(b.op("Less", j, xmax), _filter(b, arg, how), b.const(0.0, D))
    index = b.op("Cast", b.op("Min", j, b.op("Sub", n_d, b.const(1.0, D))), to=I64)
    return index, _fixed_point(b, weights)


def _fixed_point(b: _Builder, weights: str) -> str:
    """Normalize each row by its left-to-right sum, then round to 22 bits as C does."""
    total = b.op(
        "Slice",
        b.op("CumSum", weights, b.const(1, I64)),  # sequential, like ww += w (adding 0 is exact)
        b.const([-1], I64),
        b.const([2**62], I64),
        b.const([1], I64),
    )
    zero = b.const(0.0, D)
    k = b.where(b.op("Equal", total, zero), weights, b.op("Div", weights, total))
    scaled = b.op("Mul", k, b.const(float(1 << PRECISION_BITS), D))
    away = b.where(b.op("Less", k, zero), b.const(-0.5, D), b.const(0.5, D))
    return b.op("Cast", b.op("Add", scaled, away), to=I32)  # Cast truncates, as (int) does


def _filter(b: _Builder, x: str, how: str) -> str:
    zero, one = b.const(0.0, D), b.const(1.0, D)
    if how == "bilinear":
        ax = b.op("Abs", x)
        return b.where(b.op("Less", ax, one), b.op("Sub", one, ax), zero)
    if how == "area":  # box_filter: -0.5 < x <= 0.5
        gt = b.op("Greater", x, b.const(-0.5, D))
        return b.where(b.op("And", gt, b.op("LessOrEqual", x, b.const(0.5, D))), one, zero)
    ge = b.op("GreaterOrEqual", x, b.const(-3.0, D))
    inside = b.op("And", ge, b.op("Less", x, b.const(3.0, D)))
    value = b.op("Mul", _sinc(b, x), _sinc(b, b.op("Div", x, b.const(3.0, D))))
    return b.where(inside, value, zero)


def _sinc(b: _Builder, x: str) -> str:
    xp = b.op("Mul", x, b.const(math.pi, D))
    is_zero = b.op("Equal", x, b.const(0.0, D))
    return b.where(is_zero, b.const(1.0, D), b.op("Div", b.op("Sin", xp), xp))


def _fixed(b: _Builder, acc: str) -> str:
    """clip8(2^21 + acc): truncating Div differs from >> only below 0, which clips to 0."""
    rounded = b.op("Add", acc, b.const(1 << (PRECISION_BITS - 1), I32))
    shifted = b.op("Div", rounded, b.const(1 << PRECISION_BITS, I32))
    return b.op("Clip", shifted, b.const(0, I32), b.const(255, I32))


def _normalize(b: _Builder, x: str, spec: Preprocess) -> str:
    """normalize() in float32 and its order: x / scale, then (x - mean) / std unless unit."""
    x = b.op("Div", b.op("Cast", x, to=F), b.const(spec.norm.scale, F))
    if spec.norm.is_unit:
        return x
    mean = b.const(np.reshape(spec.norm.mean, (-1, 1, 1)), F)
    std = b.const(np.reshape(spec.norm.std, (-1, 1, 1)), F)
    return b.op("Div", b.op("Sub", x, mean), std)


def _finish(b: _Builder, x: str, out_w: str, spec: Preprocess, output: str) -> None:
    """[1, C, H, W'] with the right padding of pad(), written to `output`."""
    shape = b.const([1, spec.channels, spec.height, -1], I64)
    if spec.pad_to_width is None:
        b.op("Reshape", x, shape, out=output)
        return
    missing = b.op("Max", b.op("Sub", b.const(spec.pad_to_width, I64), out_w), b.const(0, I64))
    pads = b.op("Concat", b.const([0] * 7, I64), b.vec(missing), axis=0)
    value = b.const(spec.pad_value, F)
    b.op("Pad", b.op("Reshape", x, shape), pads, value, out=output, mode="constant")


def attach(model: onnx.ModelProto, spec: Preprocess) -> onnx.ModelProto:
    """`model` with its (single) image input replaced by 'pixels' uint8 [H, W, C] through
    pixels_graph; same outputs, opset imports, initializers and metadata."""
    reason = unsupported(spec)
    if reason:
        raise ValueError(f"cannot attach the pixel graph: {reason}")
    image = _image_input(model, spec)
    pixels = pixels_graph(spec, _opset(model), output=image.name)
    _check_names(model, pixels)
    out = modelio.copy(model)
    g = out.graph
    index = [i.name for i in g.input].index(image.name)
    del g.input[index]
    g.input.insert(index, pixels.graph.input[0])
    if image.name not in {v.name for v in g.value_info}:
        g.value_info.append(image)  # the tensor the model reads keeps its declared shape
    nodes = [*pixels.graph.node, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(pixels.graph.initializer)
    return out


def _image_input(model: onnx.ModelProto, spec: Preprocess) -> onnx.ValueInfoProto:
    """The one non-initializer input, checked against spec: float32 [1, channels, height, W]."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"model has {len(inputs)} inputs {names}; attach needs exactly one")
    image = inputs[0]
    kind = image.type.tensor_type
    if kind.elem_type != F:
        got = TensorProto.DataType.Name(kind.elem_type)
        raise ValueError(f"input {image.name!r} must be float32, got {got}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
    want = [1, spec.channels, spec.height, None]
    if len(dims) != 4 or any(d and w and d != w for d, w in zip(dims, want, strict=True)):
        raise ValueError(f"input {image.name!r} has shape {dims}; the spec gives {want}")
    if image.name == INPUT:
        raise ValueError(f"model input is already named {INPUT!r}; rename it before attach")
    return image


def _opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError("model imports no default-domain opset")
    return versions[0]


def _check_names(model: onnx.ModelProto, pixels: onnx.ModelProto) -> None:
    """Refuse a model that already holds names under the prefix (e.g. one attached twice)."""
    g, p = model.graph, pixels.graph
    taken = {t.name for t in [*g.input, *g.value_info, *g.output, *g.initializer]}
    taken |= {name for n in _nodes(g) for name in (*n.output, n.name)}
    ours = {t.name for t in p.initializer} | {n.name for n in _nodes(p)}
    ours |= {o for n in _nodes(p) for o in n.output} - {p.output[0].name}
    clash = sorted(taken & ours)
    if clash:
        raise ValueError(f"model already has names the pixel graph uses: {clash[:5]}")


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of `graph` and of the subgraphs its nodes hold (If branches)."""
    found = []
    for node in graph.node:
        found.append(node)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found += _nodes(sub)
    return found
