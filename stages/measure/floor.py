"""What a build could reach at best, for the report: the compute floor (multiply-accumulates
at this machine's best measured MAC rates) and the runtime floor (the same process around a
do-nothing model: what no model optimization can remove).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ocr_bundles_runtime.preprocess import Preprocess, preprocess
from ocr_bundles_runtime.session import quiet_cpu_session

from .. import modelio
from ..atomic import write_json
from ..macs import node_macs, tensor_shapes


def is_int8(node: onnx.NodeProto, producers: dict[str, str]) -> bool:
    """Integer kernels: quantized op types, and float ops fed by DequantizeLinear (QDQ), which
    onnxruntime fuses into integer kernels when it optimizes the session."""
    if modelio.is_quant_op(node.op_type):
        return True
    return any(producers.get(i) == "DequantizeLinear" for i in node.input)


def count_macs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, int]:
    """MACs per op type at input `x`, split into `fp32` and `int8` (see is_int8), and `total`:
    Conv out elements x Cin/group x kH x kW; Gemm/MatMul out elements x K; LSTM per step
    4*H*(In+H) per direction (GRU 3*, RNN 1*)."""
    shapes = tensor_shapes(model, x)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    per_op: dict[str, int] = {}
    kinds = {"fp32": 0, "int8": 0}
    for node in model.graph.node:
        macs = node_macs(node, shapes)
        if macs:
            per_op[node.op_type] = per_op.get(node.op_type, 0) + macs
            kinds["int8" if is_int8(node, producers) else "fp32"] += macs
    return {**dict(sorted(per_op.items())), **kinds, "total": sum(per_op.values())}


Rate = tuple[float, int]  # best multiply-accumulates per second, and the n x n x n that did it


def matmul_rates(sizes: Sequence[int], tries: int = 10) -> dict[str, Rate]:
    """Best single-thread MACs/s of an onnxruntime n x n x n MatMul (fp32) and MatMulInteger
    (uint8 x int8, the kernel dynamic quantization runs) over `sizes`: small ones stay in
    cache, large ones amortize call overhead. The fastest this machine runs these models' ops."""
    return {kind: max(_rate(kind, n, tries) for n in sizes) for kind in ("fp32", "int8")}


def _rate(kind: str, n: int, tries: int) -> Rate:
    from onnx import TensorProto, helper

    fp32 = kind == "fp32"
    a_type, b_type = (TensorProto.FLOAT,) * 2 if fp32 else (TensorProto.UINT8, TensorProto.INT8)
    graph = helper.make_graph(
        [helper.make_node("MatMul" if fp32 else "MatMulInteger", ["a", "b"], ["c"])],
        "rate",
        [
            helper.make_tensor_value_info("a", a_type, [n, n]),
            helper.make_tensor_value_info("b", b_type, [n, n]),
        ],
        [
            helper.make_tensor_value_info(
                "c", TensorProto.FLOAT if fp32 else TensorProto.INT32, [n, n]
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = quiet_cpu_session(model.SerializeToString())
    rng = np.random.default_rng(0)
    if fp32:
        feed = {v: rng.random((n, n), dtype=np.float32) for v in "ab"}
    else:
        feed = {
            "a": rng.integers(0, 256, (n, n), dtype=np.uint8),
            "b": rng.integers(-127, 128, (n, n), dtype=np.int8),
        }
    sess.run(None, feed)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return n**3 / best, n


def median_input(images: list[Path], spec: Preprocess) -> np.ndarray:
    """The preprocessed eval image of median width (the floor's input)."""
    xs = sorted((preprocess(p, spec) for p in images), key=lambda x: x.shape[-1])
    return xs[len(xs) // 2]


def compute_floor(
    models: dict[str, tuple[Path, Preprocess]],
    images: list[Path],
    measured: dict[str, Any],
    rates: dict[str, Rate],
    threads: int = 1,
) -> dict[str, Any]:
    """floor_ms = fp32 MACs / best fp32 rate + int8 MACs / best int8 rate, single core, at the
    median eval input, per model, next to its measured model-only p50. With several threads
    the measured time is compared against the floor divided by the thread count (perfect
    scaling). Element-wise ops, memory traffic and the LSTM's sequential steps are not in it."""
    out: dict[str, Any] = {
        "rate_gmacs": {k: round(r[0] / 1e9, 1) for k, r in rates.items()},
        "rate_op": (
            f"onnxruntime MatMul fp32 {rates['fp32'][1]}^3 / MatMulInteger u8s8 "
            f"{rates['int8'][1]}^3, 1 thread, best of 10"
        ),
        "threads": threads,
    }
    for name, (path, spec) in models.items():
        x = median_input(images, spec)
        macs = count_macs(modelio.load(path), x)
        floor_ms = (macs["fp32"] / rates["fp32"][0] + macs["int8"] / rates["int8"][0]) * 1e3
        p50 = measured.get(name, {}).get("model_p50_ms")
        out[name] = {
            "input_width": int(x.shape[-1]),
            "mmacs": {k: round(v / 1e6, 2) for k, v in macs.items()},
            "floor_ms": round(floor_ms, 3),
            "floor_ms_at_threads": round(floor_ms / threads, 3),
            "model_p50_ms": p50,
            "floor_fraction": round(floor_ms / threads / p50, 3) if p50 else None,
        }
    return out


# ---------------------------------------------------------------------------- runtime floor


def floor_model(spec: modelio.CtcSpec, pre: Preprocess) -> onnx.ModelProto:
    """The cheapest model with the given input and `classes`-wide CTC output (one step per 8
    columns, like ddddocr): one pool, one transpose, one MatMul; every step is the blank.
    Timed in a fresh process it gives what Python + onnxruntime + the preprocessing backend
    (+ ddddocr, for stock) cost before any network runs."""
    channels, height, classes = pre.channels, pre.height, len(spec.charset)
    w = np.zeros((channels, classes), np.float32)
    w[:, spec.blank] = 1.0  # blank everywhere: decodes to ""
    nodes = [
        helper.make_node(
            "AveragePool", ["x"], ["p"], kernel_shape=[height, 8], strides=[height, 8]
        ),
        helper.make_node("Squeeze", ["p", "axes"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[2, 0, 1]),
        helper.make_node("MatMul", ["t", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "runtime_floor",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, height, "W"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["T", 1, classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return modelio.with_spec(model, spec.charset, "TBC", spec.blank)


def write_floor_bundle(folder: Path, model: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """A bundle folder like `manifest`'s, its primary model replaced by `model` and no
    fallback: the runtime floor of the bundle process kind."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    write_json(folder / "charset.json", modelio.spec(model).charset)
    files = {
        name: {
            "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(),
            "bytes": (folder / name).stat().st_size,
        }
        for name in ("model.onnx", "charset.json")
    }
    doc = {
        **manifest,
        # the do-nothing model takes the host's tensor; no vectors describe it
        "input": {
            **manifest["input"],
            "name": model.graph.input[0].name,
            "feed": "tensor",
            "dtype": "float32",
        },
        "conformance": None,
        "formats": ["onnx"],
        "models": {"primary": {"files": {"onnx": "model.onnx"}, "optional": False}},
        "files": files,
        "ships": sorted(files),
        "optional": [],
    }
    write_json(folder / "manifest.json", doc)
