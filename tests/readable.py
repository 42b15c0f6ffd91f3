"""Tiny CTC recognizers, designed by hand, that really READ a string from a generated image.

A test can then check the exact text that comes back at the end of the whole chain (model
stage, build passes, evaluation, bundle, runtime), for every variant of the model contract.

The image: a row of vertical stripes BLOCK pixels wide and `height` tall. Every stripe's gray
level encodes one class: class k is drawn at level LEVEL0 + STEP * k, the blank included, so
"ab" is drawn as the stripes [blank, a, blank, b, blank] (blanks pad it to MIN_WIDTH).

The model:
  input [N, C, H, W] --Conv(kernel [H, BLOCK], stride [H, BLOCK], weights on ONE channel)-->
  u [N, 1, 1, T]: the stripe's level as a centered class coordinate, u = k - (K - 1) / 2, by an
  affine map that undoes the declared normalization (unit x / 255, or signed [-1, 1])
  --head--> scores s_k = ALPHA * (2 c_k u - c_k^2) with c_k = k - (K - 1) / 2
Since s_k = ALPHA (u^2 - (u - c_k)^2), the best class is the one whose center is nearest u, by
a margin of ALPHA over its neighbours at every stripe (u = c_k exactly): softmax confidences
are ~1 - 2 e^-ALPHA, and int8 quantization of the head weights 2 ALPHA c_k (per tensor: an
error of at most ALPHA (K - 1)^2 / 508 per class) keeps every argmax for up to 16 classes.
Greedy CTC decoding of [blank, a, blank, b, blank] yields "ab".

Variants (`Reader` fields): the head (MatMul + Add, batch-agnostic; Gemm between Reshapes, batch
1; 1x1 Conv), output layout BTC | TBC, logits | probabilities (a final Softmax), 1 or 3 input
channels (a 3-channel reader looks only at the channel that is R in its declared order, so
feeding the other order reads the string drawn in B), unit | signed normalization, weights in
Constant nodes, any blank index, any opset, extra metadata (a charset under a metadata key).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

BLOCK = 4  # stripe width in pixels = one CTC time step
LEVEL0 = 10  # gray level of class 0
STEP = 20  # gray levels between consecutive classes: 12 classes fit in 10..230
ALPHA = 10.0  # score margin at a stripe's level: softmax confidence ~ 1 - 2 e^-10
MIN_WIDTH = 16  # ocr_bundles_runtime.preprocess.MIN_WIDTH: narrower images would be resized

Head = Literal["matmul", "gemm", "conv"]


@dataclass(frozen=True)
class Reader:
    """One hand-made recognizer: its classes (index = class) and its contract."""

    classes: tuple[str, ...]
    blank: int = 0
    layout: Literal["TBC", "BTC"] = "BTC"
    kind: Literal["logits", "probabilities"] = "logits"
    channels: Literal[1, 3] = 1
    channel_order: Literal["rgb", "bgr"] = "rgb"
    normalize: Literal["unit", "signed"] = "unit"
    head: Head = "matmul"
    constants: bool = False  # weights in Constant nodes instead of initializers
    height: int = 16
    opset: int = 13
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 2 <= len(self.classes) <= 12:
            raise ValueError(f"a reader has 2..12 classes, got {len(self.classes)}")
        if not 0 <= self.blank < len(self.classes):
            raise ValueError(f"blank {self.blank} outside {len(self.classes)} classes")

    @property
    def batch(self) -> bool:
        return self.head != "gemm"  # the Gemm head flattens [N*T, 1]: batch 1 only

    def model(self) -> onnx.ModelProto:
        return reader_model(self)

    def image(self, text: str, other: str | None = None) -> bytes:
        return make_image(text, self.classes, self.blank, self.height, self.channels, other)

    def with_(self, **changes) -> Reader:
        return replace(self, **changes)


def levels(text: str, classes: Sequence[str], blank: int = 0) -> list[int]:
    """The stripes' class indices: blank, then each character followed by a blank, then more
    blanks up to MIN_WIDTH. A character must be one class (not the blank)."""
    index = {c: i for i, c in enumerate(classes) if i != blank}
    missing = sorted(set(text) - set(index))
    if missing:
        raise ValueError(f"characters {missing} are not classes of {list(classes)}")
    out = [blank]
    for ch in text:
        out += [index[ch], blank]
    while len(out) * BLOCK < MIN_WIDTH:
        out.append(blank)
    return out


def gray(k: int) -> int:
    return LEVEL0 + STEP * k


def make_image(
    text: str,
    classes: Sequence[str],
    blank: int = 0,
    height: int = 16,
    channels: int = 1,
    other: str | None = None,
) -> bytes:
    """PNG bytes the reader of `classes` reads as `text`.

    channels 1: a gray ('L') image. channels 3: an RGB image whose R (and G) channel draws
    `text` and whose B channel draws `other` (default: `text` reversed), so a reader fed the
    wrong channel order reads `other`."""
    rows = [levels(text, classes, blank)]
    if channels == 3:
        rows.append(levels(text[::-1] if other is None else other, classes, blank))
        n = max(len(r) for r in rows)
        rows = [r + [blank] * (n - len(r)) for r in rows]
    stripes = [np.repeat(np.array([gray(k) for k in r], np.uint8), BLOCK) for r in rows]
    planes = [np.tile(s, (height, 1)) for s in stripes]
    if channels == 1:
        img = Image.fromarray(planes[0], mode="L")
    else:
        r, b = planes
        img = Image.fromarray(np.stack([r, r, b], axis=-1), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _affine(r: Reader) -> tuple[float, float]:
    """(a, b) with u = a * x + b: the normalized input x back to the centered class coordinate."""
    center = (len(r.classes) - 1) / 2
    if r.normalize == "unit":  # x = p / 255
        return 255.0 / STEP, -LEVEL0 / STEP - center
    # signed: x = (p / 255 - 0.5) / 0.5 = 2 p / 255 - 1
    return 127.5 / STEP, (127.5 - LEVEL0) / STEP - center


def reader_model(r: Reader) -> onnx.ModelProto:
    """The recognizer described by `r` (see the module docstring), without `ocr.*` metadata:
    like a user's file, it carries only what `r.metadata` adds."""
    f32 = np.float32
    k = len(r.classes)
    a, b = _affine(r)
    read = 0 if r.channel_order == "rgb" else 2  # the channel that is R in the declared order
    feature_w = np.zeros((1, r.channels, r.height, BLOCK), f32)
    feature_w[0, read if r.channels == 3 else 0] = a / (r.height * BLOCK)
    centers = np.arange(k, dtype=np.float64) - (k - 1) / 2
    head_w = (2 * ALPHA * centers).astype(f32)
    head_b = (-ALPHA * centers**2).astype(f32)

    g = _Graph(r.constants)
    g.tensor("feature_w", feature_w)
    g.tensor("feature_b", np.array([b], f32))
    g.node("Conv", ["input", "feature_w", "feature_b"], ["u"], strides=[r.height, BLOCK])
    if r.head == "matmul":  # [N,1,1,T] -> [N,T,1] @ [1,K] + [K] -> [N,T,K]
        g.tensor("to_ntf", np.array([0, -1, 1], np.int64))
        g.tensor("head_w", head_w[None, :])
        g.tensor("head_b", head_b)
        g.node("Reshape", ["u", "to_ntf"], ["u_ntf"])
        g.node("MatMul", ["u_ntf", "head_w"], ["mm"])
        g.node("Add", ["mm", "head_b"], ["scores"])
        last = g.transpose("scores", [1, 0, 2] if r.layout == "TBC" else None)
    elif r.head == "gemm":  # [1,1,1,T] -> [T,1] Gemm -> [T,K] -> [T,1,K] | [1,T,K]
        g.tensor("flat", np.array([-1, 1], np.int64))
        g.tensor("head_w", head_w[:, None])  # [K, 1], transB
        g.tensor("head_b", head_b)
        shape = [-1, 1, k] if r.layout == "TBC" else [1, -1, k]
        g.tensor("out_shape", np.array(shape, np.int64))
        g.node("Reshape", ["u", "flat"], ["u_flat"])
        g.node("Gemm", ["u_flat", "head_w", "head_b"], ["scores2d"], transB=1)
        g.node("Reshape", ["scores2d", "out_shape"], ["scores"])
        last = "scores"
    else:  # 1x1 Conv: [N,1,1,T] -> [N,K,1,T] -> [N,K,T] -> [T,N,K] | [N,T,K]
        g.tensor("head_w", head_w.reshape(k, 1, 1, 1))
        g.tensor("head_b", head_b)
        g.node("Conv", ["u", "head_w", "head_b"], ["scores4d"])
        if r.opset >= 13:
            g.tensor("sq_axes", np.array([2], np.int64))
            g.node("Squeeze", ["scores4d", "sq_axes"], ["scores_nkt"])
        else:
            g.node("Squeeze", ["scores4d"], ["scores_nkt"], axes=[2])
        last = g.transpose("scores_nkt", [2, 0, 1] if r.layout == "TBC" else [0, 2, 1])
    if r.kind == "probabilities":
        g.node("Softmax", [last], ["probs"], axis=-1)
        last = "probs"
    g.node("Identity", [last], ["output"])

    n = "N" if r.batch else 1
    out_shape = ["T", n, k] if r.layout == "TBC" else [n, "T", k]
    graph = helper.make_graph(
        g.nodes,
        "readable_ctc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, r.channels, r.height, "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", r.opset)])
    model.ir_version = 8
    for key, value in r.metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


class _Graph:
    """Nodes and weights, the weights as initializers or as Constant nodes."""

    def __init__(self, constants: bool) -> None:
        self.constants = constants
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def tensor(self, name: str, arr: np.ndarray) -> None:
        if self.constants:
            value = numpy_helper.from_array(arr)
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=value))
        else:
            self.initializers.append(numpy_helper.from_array(arr, name))

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        name = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def transpose(self, value: str, perm: list[int] | None) -> str:
        if perm is None:
            return value
        self.node("Transpose", [value], [f"{value}_t"], perm=perm)
        return f"{value}_t"


def write_dictionary(path: Path, entries: Sequence[str]) -> Path:
    """A dictionary file: .json = a JSON list; anything else = one entry per line, verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(list(entries), ensure_ascii=False), encoding="utf-8")
    else:
        path.write_bytes("".join(f"{e}\n" for e in entries).encode("utf-8"))
    return path


def texts(alphabet: str, n: int, seed: int, lengths: tuple[int, int] = (2, 5)) -> list[str]:
    """`n` seeded random strings over `alphabet` (repeated characters included)."""
    rng = np.random.default_rng(seed)
    chars = list(alphabet)
    return [
        "".join(rng.choice(chars, size=int(rng.integers(lengths[0], lengths[1] + 1))))
        for _ in range(n)
    ]
