"""The bench stage: every variant of a device class timed in fresh, pinned worker processes.

Rounds are interleaved (round r runs variant A, B, C, ... once each, then round r+1), so a slow
spell of this noisy machine hits every variant alike; each figure is the median over rounds and
the min/max spread is kept. Each round is one fresh `python -m stages.bench_worker` process per
variant, so cold start and peak RSS are a real process's, not a warmed-up parent's.

Accuracy is not re-measured here: it comes from evaluate's eval.json (reference, stages, final)
and baselines' accuracy.json (stock_*, naive_int8); the bundle runs the final model with the
final preprocessing, so it carries final's accuracy (its own outputs on the timed images are
still checked: `timed_accuracy`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import modelio
from .baselines import ACCURACY_FILE, BASELINES, NAIVE_FILE, stock_model_file
from .data import read_split
from .errors import PipelineError
from .inference import Runtime, make_session
from .preprocess import Preprocess, preprocess
from .recipe import Budgets, Recipe

ROOT = Path(__file__).resolve().parent.parent  # the worker runs as `-m stages.bench_worker` here
TIMED = ("cold_start_ms", "warm_p50_ms", "warm_p95_ms", "model_p50_ms", "peak_rss_mb")
STDERR_TAIL = 2000  # characters of a failed worker's stderr quoted in the error


class BenchError(PipelineError):
    """A worker failed or timed out; the message names the variant and quotes its stderr."""


@dataclass(frozen=True)
class BenchConfig:
    repeats: int = 5
    warm_images: int = 100
    warmup: int = 10
    baselines: tuple[str, ...] = BASELINES  # which of stock_beta, stock_default, naive_int8
    timeout_s: float = 900.0  # per worker process

    @classmethod
    def from_params(cls, bench: Any) -> BenchConfig:
        """From params.yaml's `bench` (BenchParams: repeats, warm_images, warmup, baselines)."""
        return cls(bench.repeats, bench.warm_images, bench.warmup, tuple(bench.baselines))


@dataclass(frozen=True)
class Variant:
    """One thing to time: `worker` holds its kind-specific worker spec fields."""

    name: str
    kind: str  # onnx | stock | bundle
    size_mb: float | None
    worker: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why it is not measured


# ---------------------------------------------------------------------------- pure helpers


def interleave(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: every variant once per round, rounds one after another."""
    return [(r, name) for r in range(repeats) for name in names]


def pinned_cores(threads: int, available: Sequence[int] | None = None) -> list[int]:
    """The first `threads` CPUs this process may use (all of them if there are fewer)."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    return cpus[: max(1, threads)]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def round_stats(run: dict[str, Any]) -> dict[str, float | None]:
    """One worker run -> its figures (ms, MB)."""
    model = run.get("model_ms")
    return {
        "cold_start_ms": run["cold_start_ms"],
        "warm_p50_ms": percentile(run["total_ms"], 50),
        "warm_p95_ms": percentile(run["total_ms"], 95),
        "model_p50_ms": percentile(model, 50) if model else None,
        "peak_rss_mb": run["peak_rss_mb"],
    }


def summarize(rounds: list[dict[str, float | None]]) -> dict[str, Any]:
    """Median over rounds of each figure, and its [min, max] spread."""
    out: dict[str, Any] = {}
    spread: dict[str, list[float]] = {}
    for key in TIMED:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = _round(float(np.median(values)), key)
        spread[key] = [_round(min(values), key), _round(max(values), key)]
    out["spread"] = spread
    return out


def _round(value: float, key: str) -> float:
    return round(value, 1) if key in ("cold_start_ms", "peak_rss_mb") else round(value, 3)


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def ratios(final: dict[str, Any], stock: dict[str, Any]) -> dict[str, float | None]:
    """The final model against a stock variant: below 1 is better for size, cold start and
    peak RSS; above 1 is better for warm_speedup; accuracy_drop_pts > 0 means final is worse."""
    acc_f, acc_s = final.get("accuracy"), stock.get("accuracy")
    return {
        "size": _ratio(final.get("size_mb"), stock.get("size_mb")),
        "warm_speedup": _ratio(stock.get("warm_p50_ms"), final.get("warm_p50_ms")),
        "cold_start": _ratio(final.get("cold_start_ms"), stock.get("cold_start_ms")),
        "peak_rss": _ratio(final.get("peak_rss_mb"), stock.get("peak_rss_mb")),
        "accuracy_drop_pts": (
            round((acc_s - acc_f) * 100, 2) if acc_f is not None and acc_s is not None else None
        ),
    }


def ratio_spread(
    final_runs: list[dict[str, Any]], stock_runs: list[dict[str, Any]]
) -> dict[str, list[float]]:
    """[min, max] of each timed ratio over the rounds. Rounds interleave the variants, so
    machine-wide drift (which moves every absolute median between runs) cancels in a ratio."""
    per_round = [
        ratios(round_stats(f), round_stats(s)) for f, s in zip(final_runs, stock_runs, strict=False)
    ]
    out = {}
    for key in ("warm_speedup", "cold_start", "peak_rss"):
        values = [r[key] for r in per_round if r[key] is not None]
        if values:
            out[key] = [min(values), max(values)]
    return out


def check_budgets(
    budgets: Budgets, final: dict[str, Any], reference: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each recipe budget with the final model's value and whether it holds (None: no limit
    set, or nothing measured to judge)."""
    drop = None
    if final.get("accuracy") is not None and reference.get("accuracy") is not None:
        drop = round((reference["accuracy"] - final["accuracy"]) * 100, 2)
    values = {
        "max_size_mb": final.get("size_mb"),
        "max_warm_p50_ms": final.get("warm_p50_ms"),
        "max_peak_rss_mb": final.get("peak_rss_mb"),
        "max_accuracy_drop_pts": drop,
    }
    out = {}
    for name, value in values.items():
        limit = getattr(budgets, name)
        ok = None if limit is None or value is None else bool(value <= limit)
        out[name] = {"limit": limit, "value": value, "ok": ok}
    return out


# ---------------------------------------------------------------------------- workers


def worker_spec(
    variant: Variant, images: list[Path], cfg: BenchConfig, cores: list[int]
) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "kind": variant.kind,
        "cores": cores,
        "images": [str(p.resolve()) for p in images],
        "warm_images": cfg.warm_images,
        "warmup": cfg.warmup,
        **variant.worker,
    }


def spawn(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one worker; its result plus `cold_start_ms`, from spawn to its first text."""
    with tempfile.TemporaryFile(mode="w+b") as errf:
        t0 = time.perf_counter()
        with subprocess.Popen(
            [sys.executable, "-m", "stages.bench_worker", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errf,
            stdin=subprocess.DEVNULL,
        ) as proc:
            try:
                lines, first_at = _read_events(proc, t0 + timeout_s)
                rc = proc.wait(timeout=max(1.0, t0 + timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(
                    _failure(spec, f"timed out after {timeout_s:.0f}s", errf)
                ) from None
        if rc != 0 or first_at is None or len(lines) < 2:
            raise BenchError(_failure(spec, f"exit code {rc}", errf))
    result = json.loads(lines[-1])
    result["cold_start_ms"] = (first_at - t0) * 1e3
    result["first_text"] = json.loads(lines[0])["text"]
    return result


def _read_events(proc: subprocess.Popen[bytes], deadline: float) -> tuple[list[str], float | None]:
    """Read stdout to EOF with select, timestamping the arrival of the first full line."""
    assert proc.stdout is not None
    fd, buf, first_at = proc.stdout.fileno(), b"", None
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if first_at is None and b"\n" in chunk:
            first_at = time.perf_counter()
        if not chunk:
            return [ln for ln in buf.decode().splitlines() if ln.strip()], first_at
        buf += chunk


def _failure(spec: dict[str, Any], what: str, errf: Any) -> str:
    errf.seek(0)
    tail = errf.read().decode(errors="replace")[-STDERR_TAIL:]
    return f"bench worker for variant '{spec['variant']}' failed ({what}); stderr tail:\n{tail}"


def measure(
    variants: list[Variant], images: list[Path], cfg: BenchConfig, cores: list[int]
) -> dict[str, list[dict[str, Any]]]:
    """All rounds, interleaved; returns each variant's worker results in round order."""
    live = [v for v in variants if v.skipped is None]
    by_name = {v.name: v for v in live}
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in live}
    for _, name in interleave([v.name for v in live], cfg.repeats):
        runs[name].append(spawn(worker_spec(by_name[name], images, cfg, cores), cfg.timeout_s))
    return runs


# ---------------------------------------------------------------------------- variants


def collect_variants(
    build: Path,
    source: Path,
    baselines: Path,
    recipe: Recipe,
    reference: Preprocess,
    include: Sequence[str],
    bundle: Path,
) -> list[Variant]:
    """stock_beta, stock_default, naive_int8 (those included), reference, every stage model,
    final, bundle; in that order, which is also each round's run order."""
    rt = recipe.runtime.as_dict()
    ref_pre, pre = reference.as_dict(), recipe.preprocess.as_dict()
    out = [
        Variant(name, "stock", round(modelio.size_mb(stock_model_file(name)), 3), {"stock": kind})
        for name, kind in (("stock_beta", "beta"), ("stock_default", "default"))
        if name in include
    ]
    if "naive_int8" in include:
        out.append(_onnx("naive_int8", baselines / NAIVE_FILE, ref_pre, rt))
    out.append(_onnx("reference", source / "model.onnx", ref_pre, rt))
    for st in json.loads((build / "model" / "build.json").read_text())["stages"]:
        out.append(_onnx(Path(st["file"]).stem, build / "model" / st["file"], pre, rt))
    out.append(_onnx("final", build / "model" / "model.onnx", pre, rt))
    out.append(bundle_variant(bundle))
    return out


def _onnx(name: str, path: Path, pre: dict[str, Any], rt: dict[str, Any]) -> Variant:
    spec = {"model": str(path.resolve()), "preprocess": pre, "runtime": rt}
    return Variant(name, "onnx", round(modelio.size_mb(path), 3), spec)


def runtime_floor_model(final: onnx.ModelProto, height: int, channels: int) -> onnx.ModelProto:
    """The cheapest model with the final model's input, charset and TBC output (one step per 8
    columns, like ddddocr): one pool, one transpose, one MatMul. Timed in a fresh process it
    gives what Python + onnxruntime + the preprocessing backend cost before any network runs."""
    classes = len(modelio.spec(final).charset)
    w = np.zeros((channels, classes), np.float32)
    w[:, 0] = 1.0  # blank everywhere: decodes to ""
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
    spec = modelio.spec(final)
    return modelio.with_spec(model, spec.charset, "TBC", spec.blank)


def floor_variant(final: Path, recipe: Recipe, tmp: Path) -> Variant:
    """`runtime_floor`: the class's process (imports, preprocessing, session options) around
    a do-nothing model, so the report shows how much of cold start and memory no model
    optimization can remove."""
    pre = recipe.preprocess
    path = tmp / "runtime_floor.onnx"
    modelio.save(runtime_floor_model(modelio.load(final), pre.height, pre.channels), path)
    return _onnx("runtime_floor", path, pre.as_dict(), recipe.runtime.as_dict())


def bundle_variant(bundle: Path) -> Variant:
    """The deployable bundle, or a skipped entry saying why it cannot be measured."""
    if not bundle.is_dir():
        return Variant("bundle", "bundle", None, skipped=f"no bundle at {bundle}")
    if importlib.util.find_spec("stages.runtime") is None:
        return Variant("bundle", "bundle", None, skipped="stages/runtime.py is not installed")
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    return Variant("bundle", "bundle", round(size, 3), {"bundle": str(bundle.resolve())})


def accuracies(eval_json: dict[str, Any], baselines_json: dict[str, Any] | None) -> dict[str, Any]:
    """name -> {accuracy, cer, agreement}; the bundle takes final's (same model, same input)."""
    pool = dict(eval_json["variants"])
    if baselines_json is not None:
        pool.update(baselines_json["variants"])
    out = {
        name: {k: v.get(k) for k in ("accuracy", "cer", "agreement")} for name, v in pool.items()
    }
    if "final" in out:
        out["bundle"] = {**out["final"], "source": "final"}
    return out


# ---------------------------------------------------------------------------- compute floor

_CONV = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "DynamicQuantizeMatMul"}
_RNN = {"LSTM": 4, "DynamicQuantizeLSTM": 4, "GRU": 3, "RNN": 1}
_INT8_OPS = {
    "ConvInteger",
    "QLinearConv",
    "MatMulInteger",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
}


def tensor_shapes(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every initializer and every node output for input `x`, from one
    onnxruntime run with all intermediate tensors exposed as outputs (no optimization, so the
    tensors are the graph's own)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    extra = [o for n in probe.graph.node for o in n.output if o and o not in declared]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: x})
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update({n: tuple(np.shape(v)) for n, v in zip(names, values, strict=True)})
    shapes[model.graph.input[0].name] = tuple(x.shape)
    return shapes


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node (0 for ops that do no dot products)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in _CONV:
        w = shapes[node.input[_CONV[op]]]
        return int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        w = shapes[node.input[1]]
        return int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
    if op in _MATMUL:
        a = shapes[node.input[0]]
        k = a[-2] if attrs.get("transA") else a[-1]
        return int(np.prod(shapes[node.output[0]])) * int(k)
    if op == "Gemm":
        a = shapes[node.input[0]]
        k = a[0] if attrs.get("transA") else a[1]
        return int(np.prod(shapes[node.output[0]])) * int(k)
    if op in _RNN:
        x = shapes[node.input[0]]  # [T, B, In] (layout 0) or [B, T, In]
        steps, batch = (x[1], x[0]) if attrs.get("layout") else (x[0], x[1])
        hidden = int(attrs["hidden_size"])
        dirs = 2 if attrs.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
        return steps * batch * dirs * _RNN[op] * hidden * (x[2] + hidden)
    return 0


def is_int8(node: onnx.NodeProto, producers: dict[str, str]) -> bool:
    """Integer kernels: quantized op types, and float ops fed by DequantizeLinear (QDQ), which
    onnxruntime fuses into integer kernels when it optimizes the session."""
    if node.op_type in _INT8_OPS:
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


def matmul_rates(sizes: Sequence[int] = (256, 512, 1024), tries: int = 10) -> dict[str, Rate]:
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
    sess = make_session(model.SerializeToString(), Runtime(intra_op_threads=1))
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


# ---------------------------------------------------------------------------- facts


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": metadata.version("onnxruntime"),
        "ddddocr": metadata.version("ddddocr"),
    }


def dataset_info(items: list[tuple[Path, str]], cfg: BenchConfig) -> dict[str, Any]:
    from PIL import Image

    sizes = []
    for p, _ in items:
        with Image.open(p) as im:
            sizes.append(im.size)
    lengths = [len(t) for _, t in items]
    return {
        "eval_images": len(items),
        "image_size_median": [
            int(np.median([s[0] for s in sizes])),
            int(np.median([s[1] for s in sizes])),
        ],
        "label_length": [min(lengths), max(lengths)],
        "timed_images": cfg.warm_images,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
    }


# ---------------------------------------------------------------------------- the stage


def variant_record(
    v: Variant, runs: list[dict[str, Any]], acc: dict[str, Any], labels: list[str]
) -> dict[str, Any]:
    """Size, accuracy and the median timings of one variant (or why it was skipped)."""
    rec: dict[str, Any] = {"kind": v.kind, "size_mb": v.size_mb}
    if v.skipped:
        return {**rec, "skipped": v.skipped}
    stats = summarize([round_stats(r) for r in runs])
    spread = stats.pop("spread")
    texts = runs[0]["texts"]
    rec.update(stats)
    rec.update({k: acc.get(v.name, {}).get(k) for k in ("accuracy", "cer", "agreement")})
    if v.kind == "bundle":
        rec["accuracy_source"] = "final"  # same model, same preprocessing: evaluate's figures
    rec["timed_accuracy"] = round(
        float(np.mean([t == labels[i % len(labels)] for i, t in enumerate(texts)])), 4
    )
    rec["ort_threads"] = runs[0]["ort_threads"]
    rec["os_threads"] = runs[0]["os_threads"]
    rec["escaped_threads"] = max(r["escaped_threads"] for r in runs)
    rec["imported"] = runs[0]["imported"]
    if runs[0].get("model_timing"):
        rec["model_timing"] = runs[0]["model_timing"]
    rec["spread"] = spread
    return rec


def run_bench(
    target: str,
    build: Path,
    source: Path,
    baselines: Path,
    data: Path,
    recipe: Recipe,
    reference: Preprocess,
    cfg: BenchConfig,
    bundle: Path | None = None,
    floor_sizes: Sequence[int] = (256, 512, 1024),
) -> dict[str, Any]:
    """Measure every variant of `build` (build/<C>) and assemble metrics/<C>.json's data."""
    items = read_split(data / "eval")
    timed = items[: cfg.warm_images]
    include = [b for b in BASELINES if b in cfg.baselines]
    variants = collect_variants(
        build, source, baselines, recipe, reference, include, bundle or build / "bundle"
    )
    # read the accuracy files first: a missing one should fail before minutes of timing
    base_json = _read_json(baselines / ACCURACY_FILE) if include else None
    acc = accuracies(_read_json(build / "eval.json"), base_json)
    cores = pinned_cores(recipe.runtime.intra_op_threads)
    with tempfile.TemporaryDirectory() as tmp:
        variants.append(floor_variant(build / "model" / "model.onnx", recipe, Path(tmp)))
        runs = measure(variants, [p for p, _ in timed], cfg, cores)
    labels = [t for _, t in timed]
    records = {v.name: variant_record(v, runs.get(v.name, []), acc, labels) for v in variants}
    floor = compute_floor(
        {
            "reference": (source / "model.onnx", reference),
            "final": (build / "model" / "model.onnx", recipe.preprocess),
        },
        [p for p, _ in items],
        records,
        matmul_rates(floor_sizes),
        recipe.runtime.intra_op_threads,
    )
    return assemble(target, recipe, cores, records, items, cfg, floor, runs)


def assemble(
    target: str,
    recipe: Recipe,
    cores: list[int],
    records: dict[str, Any],
    items: list[tuple[Path, str]],
    cfg: BenchConfig,
    floor: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    final, ref = records["final"], records["reference"]
    affinities = sorted({tuple(r["thread_affinity"]) for rs in runs.values() for r in rs})
    return {
        "target": target,
        "description": recipe.description,
        "threads": recipe.runtime.intra_op_threads,
        "affinity": cores,
        # the CPUs the workers' threads were allowed on, as each worker reported at its end
        "worker_affinity": [list(a) for a in affinities],
        "machine": machine_info(),
        "dataset": dataset_info(items, cfg),
        "variants": records,
        "ratios": _vs(final, records.get("stock_beta")),
        "ratios_spread": ratio_spread(runs.get("final", []), runs.get("stock_beta", [])),
        "vs_stock_default": _vs(final, records.get("stock_default")),
        "budgets": check_budgets(recipe.budgets, final, ref),
        "compute_floor": floor,
    }


def _vs(final: dict[str, Any], stock: dict[str, Any] | None) -> dict[str, Any] | None:
    return ratios(final, stock) if stock is not None and not stock.get("skipped") else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: missing; run the stage that writes it first") from None
