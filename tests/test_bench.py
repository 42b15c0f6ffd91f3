"""The baselines and bench stages on tiny models: pure helpers with hand numbers, then one real
bench of a tiny build (fresh pinned workers) whose metrics every other test here reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper, numpy_helper
from PIL import Image

from stages import bench, modelio, report
from stages.baselines import build_baselines, clear_output_shape
from stages.build import StageResult, write_build
from stages.data import png_bytes, write_split
from stages.decode import decode
from stages.evaluate import evaluate_build
from stages.inference import Runtime
from stages.preprocess import Preprocess
from stages.recipe import Budgets, Recipe

PRE = Preprocess(height=tiny.HEIGHT, interpolation="bilinear")
DIV = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "argmax_agreement": 1.0}
# 20x the tiny model's width: ~15 M MACs per image against ~20 k, so it must time slower
WIDE = {"features": 160, "hidden": 120}
CFG = bench.BenchConfig(repeats=2, warm_images=6, warmup=1, baselines=("naive_int8",))
METRIC_KEYS = {
    "target",
    "description",
    "threads",
    "affinity",
    "worker_affinity",
    "machine",
    "dataset",
    "variants",
    "ratios_spread",
    "ratios",
    "vs_stock_default",
    "budgets",
    "compute_floor",
}
VARIANT_KEYS = {
    "kind",
    "size_mb",
    "cold_start_ms",
    "warm_p50_ms",
    "warm_p95_ms",
    "model_p50_ms",
    "peak_rss_mb",
    "accuracy",
    "cer",
    "agreement",
    "timed_accuracy",
    "os_threads",
    "ort_threads",
    "escaped_threads",
    "imported",
    "spread",
}


# ---------------------------------------------------------------------------- pure helpers


def test_interleave_runs_every_variant_once_per_round_in_order() -> None:
    assert bench.interleave(["a", "b", "c"], 2) == [
        (0, "a"),
        (0, "b"),
        (0, "c"),
        (1, "a"),
        (1, "b"),
        (1, "c"),
    ]


def test_summarize_takes_the_median_over_rounds_and_keeps_the_spread() -> None:
    rounds = [
        {"cold_start_ms": c, "warm_p50_ms": w, "warm_p95_ms": w * 2, "model_p50_ms": None}
        | {"peak_rss_mb": 100.0}
        for c, w in ((300.0, 5.0), (100.0, 9.0), (200.0, 7.0))
    ]
    out = bench.summarize(rounds)
    assert out["cold_start_ms"] == 200.0 and out["warm_p50_ms"] == 7.0
    assert out["warm_p95_ms"] == 14.0 and out["model_p50_ms"] is None
    assert out["spread"]["cold_start_ms"] == [100.0, 300.0]
    assert out["spread"]["warm_p50_ms"] == [5.0, 9.0]
    assert "model_p50_ms" not in out["spread"]


def test_round_stats_percentiles_of_one_worker_run() -> None:
    run = {
        "cold_start_ms": 250.0,
        "total_ms": [float(i) for i in range(1, 101)],
        "model_ms": [1.0, 2.0, 3.0],
        "peak_rss_mb": 80.0,
    }
    stats = bench.round_stats(run)
    assert stats["warm_p50_ms"] == pytest.approx(50.5)
    assert stats["warm_p95_ms"] == pytest.approx(95.05)
    assert stats["model_p50_ms"] == 2.0


def test_ratios_with_hand_numbers() -> None:
    final = {
        "size_mb": 10.0,
        "warm_p50_ms": 5.0,
        "cold_start_ms": 100.0,
        "peak_rss_mb": 50.0,
        "accuracy": 0.90,
    }
    stock = {
        "size_mb": 50.0,
        "warm_p50_ms": 20.0,
        "cold_start_ms": 400.0,
        "peak_rss_mb": 200.0,
        "accuracy": 0.92,
    }
    assert bench.ratios(final, stock) == {
        "size": 0.2,
        "warm_speedup": 4.0,
        "cold_start": 0.25,
        "peak_rss": 0.25,
        "accuracy_drop_pts": 2.0,
    }


def test_ratios_are_none_where_a_figure_is_missing() -> None:
    r = bench.ratios({"size_mb": 1.0}, {"size_mb": 4.0, "warm_p50_ms": 3.0})
    assert r["size"] == 0.25
    assert r["warm_speedup"] is None and r["accuracy_drop_pts"] is None


def test_budgets_judge_the_final_model_and_leave_unset_ones_open() -> None:
    budgets = Budgets(max_size_mb=20, max_warm_p50_ms=4, max_accuracy_drop_pts=1.0)
    final = {"size_mb": 13.6, "warm_p50_ms": 5.0, "peak_rss_mb": 90.0, "accuracy": 0.885}
    out = bench.check_budgets(budgets, final, {"accuracy": 0.89})
    assert out["max_size_mb"] == {"limit": 20, "value": 13.6, "ok": True}
    assert out["max_warm_p50_ms"]["ok"] is False
    assert out["max_peak_rss_mb"] == {"limit": None, "value": 90.0, "ok": None}
    assert out["max_accuracy_drop_pts"] == {"limit": 1.0, "value": 0.5, "ok": True}


def test_pinned_cores_takes_the_first_n_usable_cpus() -> None:
    assert bench.pinned_cores(1, [3, 1, 2]) == [1]
    assert bench.pinned_cores(2, [3, 1, 2]) == [1, 2]
    assert bench.pinned_cores(8, [0, 1]) == [0, 1]


def test_count_macs_matches_the_tiny_models_hand_count() -> None:
    classes, features, hidden, width = 7, 8, 6, 40
    model = tiny.tiny_ctc(classes, features, hidden)
    steps = width // 2  # Conv kernel 8x2, stride (8, 2)
    macs = bench.count_macs(model, tiny.inputs(1, widths=(width,))[0])
    assert macs["Conv"] == features * steps * 1 * tiny.HEIGHT * 2
    assert macs["LSTM"] == steps * 2 * 4 * hidden * (features + hidden)
    assert macs["Gemm"] == steps * 2 * hidden * classes
    assert macs["total"] == macs["Conv"] + macs["LSTM"] + macs["Gemm"]


def test_count_macs_reads_quantized_ops_too(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    model = tiny.tiny_ctc(wrong_output_shape=False)
    modelio.save(model, tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx")
    x = tiny.inputs(1, widths=(40,))[0]
    fp32 = bench.count_macs(model, x)
    int8 = bench.count_macs(onnx.load(str(tmp_path / "q.onnx")), x)
    assert fp32["int8"] == 0 and fp32["fp32"] == fp32["total"]
    assert int8["total"] == fp32["total"]
    # default dynamic quantization turns every Conv, MatMul and LSTM into an integer op
    assert {"ConvInteger", "DynamicQuantizeLSTM", "MatMulInteger"} <= set(int8)
    assert int8["int8"] == int8["total"] and int8["fp32"] == 0


def test_a_conv_fed_by_dequantize_linear_counts_as_int8() -> None:
    model = tiny.tiny_ctc(wrong_output_shape=False)
    w = next(t for t in model.graph.initializer if t.name == "conv_w")
    q = np.clip(np.round(numpy_helper.to_array(w) / 0.01), -127, 127).astype(np.int8)
    model.graph.initializer.remove(w)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, "conv_w_q"),
            numpy_helper.from_array(np.array(0.01, np.float32), "conv_w_s"),
        ]
    )
    dq = helper.make_node("DequantizeLinear", ["conv_w_q", "conv_w_s"], ["conv_w"])
    model.graph.node.insert(0, dq)
    macs = bench.count_macs(model, tiny.inputs(1, widths=(40,))[0])
    assert macs["int8"] == macs["Conv"] and macs["fp32"] == macs["LSTM"] + macs["Gemm"]


def test_matmul_rates_are_plausible() -> None:
    rates = bench.matmul_rates((32, 64), tries=2)
    assert set(rates) == {"fp32", "int8"}
    for rate, n in rates.values():
        assert n in (32, 64) and 1e7 < rate < 1e13


def test_bundle_variant_is_skipped_with_a_reason_when_missing(tmp_path: Path) -> None:
    v = bench.bundle_variant(tmp_path / "bundle")
    assert v.skipped and "no bundle" in v.skipped and v.size_mb is None


def test_clear_output_shape_drops_only_output_zeros_shape() -> None:
    model = tiny.tiny_ctc(wrong_output_shape=True)
    out = clear_output_shape(model)
    assert not out.graph.output[0].type.tensor_type.HasField("shape")
    assert model.graph.output[0].type.tensor_type.HasField("shape")  # input untouched
    assert out.graph.node == model.graph.node


# ---------------------------------------------------------------------------- a tiny project


def noise_png(rng: np.random.Generator) -> bytes:
    """A 240x16 image: 120 input columns at height 8, so 60 CTC steps."""
    return png_bytes(Image.fromarray(rng.integers(0, 256, (16, 240, 3), dtype=np.uint8)))


def make_project(root: Path) -> dict[str, Any]:
    """data/eval, models/source, build/tiny/{model,eval.json}, build/baselines like the stages
    write them; the final model is the 20x wider one."""
    rng = np.random.default_rng(3)
    labels = ["ab", "cdef", "fa", "bbc", "ed", "a", "cc", "def"]
    write_split(root / "data" / "eval", [(t, noise_png(rng)) for t in labels])
    source = root / "models" / "source"
    modelio.save(tiny.tiny_ctc(wrong_output_shape=True), source / "model.onnx")
    recipe = Recipe(
        description="tiny test class",
        passes=[],
        preprocess=PRE,
        budgets=Budgets(max_size_mb=5.0, max_warm_p50_ms=0.001, max_accuracy_drop_pts=100),
    )
    narrow = tiny.tiny_ctc(wrong_output_shape=False)
    wide = tiny.tiny_ctc(wrong_output_shape=False, **WIDE)
    build = root / "build" / "tiny"
    results = [StageResult(1, "narrow", narrow, 0.1, DIV), StageResult(2, "widen", wide, 0.2, DIV)]
    write_build(build / "model", recipe, results, "tiny")
    records = json.loads((build / "model" / "build.json").read_text())
    records["stages"][1]["sensitivity"] = [{"node": "lstm", "drop_pts": 1.5}]
    modelio.write_json(build / "model" / "build.json", records)
    evaluation = evaluate_build("tiny", source, build / "model", root / "data", recipe, PRE)
    modelio.write_json(build / "eval.json", evaluation)
    build_baselines(
        source, root / "data", root / "build" / "baselines", PRE, Runtime(), ["naive_int8"]
    )
    return {"root": root, "build": build, "source": source, "recipe": recipe}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_project(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def metrics(project: dict[str, Any]) -> dict[str, Any]:
    root = project["root"]
    return bench.run_bench(
        "tiny",
        project["build"],
        project["source"],
        root / "build" / "baselines",
        root / "data",
        project["recipe"],
        PRE,
        CFG,
        floor_sizes=(64,),
    )


def test_baselines_writes_naive_int8_and_its_scores(project: dict[str, Any]) -> None:
    out = project["root"] / "build" / "baselines"
    acc = json.loads((out / "accuracy.json").read_text())
    naive = acc["variants"]["naive_int8"]
    assert {"accuracy", "cer", "by_length", "agreement", "size_mb"} <= set(naive)
    assert acc["images"] == 8 and "stock_beta" not in acc["variants"]
    model = modelio.load(out / "naive_int8.onnx")
    assert "DynamicQuantizeLSTM" in tiny.op_counts(model)
    assert modelio.spec(model).charset == modelio.spec(tiny.tiny_ctc()).charset


def test_baselines_refuse_unknown_names(project: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown baselines"):
        root = project["root"]
        build_baselines(project["source"], root / "data", tmp_path / "b", PRE, Runtime(), ["x"])


def test_every_metrics_key_is_present(metrics: dict[str, Any]) -> None:
    assert set(metrics) == METRIC_KEYS
    assert list(metrics["variants"]) == [
        "naive_int8",
        "reference",
        "01-narrow",
        "02-widen",
        "final",
        "bundle",
        "runtime_floor",
    ]
    for name, v in metrics["variants"].items():
        if name != "bundle":
            assert set(v) >= VARIANT_KEYS, name
            assert set(v["spread"]) == set(bench.TIMED), name
    assert {"cpu", "cores", "onnxruntime"} <= set(metrics["machine"])
    assert metrics["dataset"]["eval_images"] == 8 and metrics["dataset"]["repeats"] == 2
    assert metrics["ratios"] is None and metrics["vs_stock_default"] is None  # stock excluded
    assert set(metrics["budgets"]) == set(Budgets.model_fields)
    json.dumps(metrics)  # a DVC metrics file: plain JSON


def test_missing_bundle_is_recorded_not_fatal(metrics: dict[str, Any]) -> None:
    assert metrics["variants"]["bundle"]["skipped"].startswith("no bundle at")


def test_wider_model_is_measured_slower(metrics: dict[str, Any]) -> None:
    v = metrics["variants"]
    assert v["02-widen"]["model_p50_ms"] > v["01-narrow"]["model_p50_ms"]
    assert v["final"]["warm_p50_ms"] > v["01-narrow"]["warm_p50_ms"]
    assert v["final"]["size_mb"] > 10 * v["01-narrow"]["size_mb"]


def test_workers_honor_the_pinning_and_stay_lean(metrics: dict[str, Any]) -> None:
    first_core = sorted(os.sched_getaffinity(0))[:1]
    assert metrics["threads"] == 1 and metrics["affinity"] == first_core
    assert metrics["worker_affinity"] == [first_core]  # every thread of every worker
    for name in ("reference", "final", "naive_int8"):
        assert metrics["variants"][name]["ort_threads"] == 1
        assert metrics["variants"][name]["escaped_threads"] == 0
        imported = metrics["variants"][name]["imported"]
        assert "onnxruntime" in imported
        assert not {"pydantic", "onnx", "cv2", "ddddocr"} & set(imported), name


def test_accuracy_comes_from_evaluate_and_baselines(
    metrics: dict[str, Any], project: dict[str, Any]
) -> None:
    evaluation = json.loads((project["build"] / "eval.json").read_text())
    base = json.loads((project["root"] / "build/baselines/accuracy.json").read_text())
    v = metrics["variants"]
    assert v["final"]["accuracy"] == evaluation["variants"]["final"]["accuracy"]
    assert v["02-widen"]["agreement"] == evaluation["variants"]["02-widen"]["agreement"]
    assert v["naive_int8"]["accuracy"] == base["variants"]["naive_int8"]["accuracy"]


def test_budgets_and_floor_in_metrics(metrics: dict[str, Any]) -> None:
    assert metrics["budgets"]["max_size_mb"]["ok"] is True
    assert metrics["budgets"]["max_warm_p50_ms"]["ok"] is False
    floor = metrics["compute_floor"]
    assert floor["rate_gmacs"]["fp32"] > 0 and floor["threads"] == 1
    assert floor["final"]["input_width"] == 120
    assert floor["final"]["mmacs"]["total"] > 100 * floor["reference"]["mmacs"]["total"]
    assert floor["final"]["floor_ms"] > 0


def test_report_renders_the_measured_metrics(
    metrics: dict[str, Any], project: dict[str, Any], tmp_path: Path
) -> None:
    modelio.write_json(tmp_path / "metrics" / "tiny.json", metrics)
    text = report.write_reports(
        ["tiny"], tmp_path / "metrics", project["root"] / "build", tmp_path / "r", tmp_path / "p"
    )
    page = (tmp_path / "r" / "tiny.md").read_text()
    assert "| **final** |" in page and "bundle (skipped)" in page
    assert "## Sensitivity" in page and "| lstm | 1.5 |" in page
    assert "[tiny](reports/tiny.md)" in text
    assert (tmp_path / "p" / "pareto.csv").read_text().startswith("target,variant,")


# ---------------------------------------------------------------------------- single workers


def onnx_spec(project: dict[str, Any], cores: list[int], **extra: Any) -> dict[str, Any]:
    variant = bench._onnx("final", project["build"] / "model" / "model.onnx", PRE.as_dict(), {})
    images = sorted((project["root"] / "data" / "eval").glob("*.png"))
    cfg = bench.BenchConfig(repeats=1, warm_images=2, warmup=0)
    return {**bench.worker_spec(variant, images, cfg, cores), **extra}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_worker_pins_itself_to_the_cores_it_is_given(project: dict[str, Any]) -> None:
    last = sorted(os.sched_getaffinity(0))[-1]
    run = bench.spawn(onnx_spec(project, [last]), timeout_s=120)
    assert run["affinity"] == [last]
    assert run["cold_start_ms"] > 0 and len(run["total_ms"]) == 2


def test_failed_worker_names_the_variant_and_quotes_stderr(project: dict[str, Any]) -> None:
    spec = onnx_spec(project, [0], model="/no/such/model.onnx")
    with pytest.raises(bench.BenchError, match=r"variant 'final' failed \(exit code 1\)") as e:
        bench.spawn(spec, timeout_s=120)
    assert "no/such/model.onnx" in str(e.value)


def test_bundle_variant_measures_the_deployable_recognizer(project: dict[str, Any]) -> None:
    from stages.bundle import write_bundle

    build = project["build"]
    source_json = {"file": "model.onnx", "sha256": modelio.sha256(project["source"] / "model.onnx")}
    modelio.write_json(project["source"] / "source.json", source_json)
    out = project["root"] / "bundle-test"
    write_bundle("tiny", build / "model", project["source"], project["recipe"], None, out)
    variant = bench.bundle_variant(out)
    assert variant.skipped is None and variant.size_mb
    images = sorted((project["root"] / "data" / "eval").glob("*.png"))
    cfg = bench.BenchConfig(repeats=1, warm_images=3, warmup=1)
    run = bench.spawn(bench.worker_spec(variant, images, cfg, [0]), timeout_s=120)
    assert len(run["texts"]) == 3 and run["model_ms"] and run["model_timing"] is None


@pytest.mark.integration
def test_stock_ddddocr_worker_times_its_session(project: dict[str, Any]) -> None:
    variant = bench.Variant("stock_default", "stock", 13.6, {"stock": "default"})
    images = sorted((project["root"] / "data" / "eval").glob("*.png"))
    cfg = bench.BenchConfig(repeats=1, warm_images=2, warmup=0)
    run = bench.spawn(bench.worker_spec(variant, images, cfg, [0]), timeout_s=300)
    assert run["affinity"] == [0] and "ddddocr" in run["imported"]
    # onnxruntime's default pool would pin a thread per machine core; sized to the 1 core here
    assert run["thread_affinity"] == [0] and run["ort_threads"] == 1
    assert run["escaped_threads"] == 0
    assert len(run["model_ms"]) == 2 and all(t > 0 for t in run["model_ms"])


def test_runtime_floor_model_keeps_the_contract_and_decodes_to_nothing():
    final = tiny.tiny_ctc(wrong_output_shape=False)
    floor = bench.runtime_floor_model(final, tiny.HEIGHT, 1)
    onnx.checker.check_model(floor, full_check=True)
    assert tiny.op_counts(floor) == {"AveragePool": 1, "Squeeze": 1, "Transpose": 1, "MatMul": 1}
    assert modelio.spec(floor).charset == modelio.spec(final).charset
    x = tiny.inputs(1, widths=(32,))[0]
    logits = tiny.run(floor, x)
    assert logits.shape == (32 // 8, 1, 7)  # ddddocr's stride of 8 columns per step
    assert decode(logits, modelio.spec(floor).charset).text == ""


def test_ratio_spread_takes_each_round_pair():
    def run(cold: float, warm: float, rss: float) -> dict[str, Any]:
        return {"cold_start_ms": cold, "total_ms": [warm] * 3, "model_ms": None, "peak_rss_mb": rss}

    final = [run(100, 2.0, 50), run(110, 2.5, 50)]
    stock = [run(200, 8.0, 100), run(200, 12.5, 100)]
    assert bench.ratio_spread(final, stock) == {
        "warm_speedup": [4.0, 5.0],
        "cold_start": [0.5, 0.55],
        "peak_rss": [0.5, 0.5],
    }
    assert bench.ratio_spread(final, []) == {}
