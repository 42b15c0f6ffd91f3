"""The bench: metrics arithmetic, compute and runtime floors, worker processes, and a whole
tiny project measured by the real stage (the `measured` fixture, tests/measured.py)."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tiny
import yaml
from onnx import helper, numpy_helper

from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.preprocess import Preprocess
from stages import cli, modelio
from stages.errors import RecipeError
from stages.measure import floor, machine, metrics, spawn, worker
from stages.measure.variants import Variant
from stages.params import BenchParams, load_params
from stages.recipe import Budgets
from stages.records import BenchRecord, Ratios, SetAccuracy, VariantMetrics, read_record

# ---------------------------------------------------------------------------- metrics


def run(cold: float, warm: list[float], rss: float, cpu: float = 0.0) -> dict[str, Any]:
    return {
        "cold_start_ms": cold,
        "total_ms": warm,
        "model_ms": None,
        "peak_rss_mb": rss,
        "cpu_s": cpu,
    }


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        xs = rng.random(n).tolist()
        for q in (0, 5, 50, 95, 100):
            assert metrics.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_round_stats_of_one_worker_run() -> None:
    stats = metrics.round_stats(run(120.0, [1.0, 2.0, 3.0, 4.0], 50.0, cpu=0.02))
    assert stats["warm_p50_ms"] == 2.5
    assert stats["warm_p95_ms"] == pytest.approx(3.85)
    assert stats["cpu_s_per_1000"] == pytest.approx(5.0)  # 0.02 s over 4 calls
    assert stats["model_p50_ms"] is None


def test_summarize_takes_the_median_over_rounds_and_keeps_the_spread() -> None:
    rounds = [metrics.round_stats(run(c, [w], 50.0)) for c, w in ((100, 2), (130, 3), (110, 9))]
    out = metrics.summarize(rounds)
    assert out["cold_start_ms"] == 110.0 and out["warm_p50_ms"] == 3.0
    assert out["spread"]["cold_start_ms"] == [100.0, 130.0]
    assert out["spread"]["warm_p50_ms"] == [2.0, 9.0]


def variant(**fields: Any) -> VariantMetrics:
    sets = fields.pop("sets", {})
    return VariantMetrics(
        kind="onnx", sets={s: SetAccuracy(accuracy=a, cer=0.1) for s, a in sets.items()}, **fields
    )


def test_ratios_with_hand_numbers() -> None:
    v = variant(
        size_mb=5.0,
        ships_mb=5.5,
        warm_p50_ms=2.0,
        cold_start_ms=100.0,
        peak_rss_mb=80.0,
        cpu_s_per_1000=3.0,
        attributable_cold_start_ms=10.0,
        attributable_peak_rss_mb=15.0,
        sets={"clean": 0.9, "hard": 0.5},
    )
    stock = variant(
        size_mb=55.0,
        warm_p50_ms=10.0,
        cold_start_ms=200.0,
        peak_rss_mb=160.0,
        cpu_s_per_1000=12.0,
        attributable_cold_start_ms=100.0,
        attributable_peak_rss_mb=75.0,
        sets={"clean": 0.88, "hard": 0.55},
    )
    r = metrics.ratios(v, stock)
    assert r.size == 0.1  # what the app ships, not the model file
    assert (r.warm_speedup, r.cold_start, r.peak_rss, r.cpu) == (5.0, 0.5, 0.5, 0.25)
    assert (r.attributable_cold_start, r.attributable_peak_rss) == (0.1, 0.2)
    assert r.accuracy_drop_pts == {"clean": -2.0, "hard": 5.0}


def test_ratios_are_none_where_a_figure_is_missing() -> None:
    r = metrics.ratios(variant(size_mb=1.0), variant(size_mb=2.0, warm_p50_ms=1.0))
    assert r.size == 0.5 and r.warm_speedup is None and r.cpu is None


def test_ratio_spread_takes_each_round_pair() -> None:
    final = [run(100, [2.0], 50, 0.002), run(110, [2.5], 50, 0.002)]
    stock = [run(200, [8.0], 100, 0.008), run(200, [12.5], 100, 0.010)]
    assert metrics.ratio_spread(final, stock) == {
        "warm_speedup": [4.0, 5.0],
        "cold_start": [0.5, 0.55],
        "peak_rss": [0.5, 0.5],
        "cpu": [0.2, 0.25],
    }
    assert metrics.ratio_spread(final, []) == {}


def test_attributable_subtracts_the_floor_of_the_same_kind() -> None:
    v = variant(cold_start_ms=150.0, peak_rss_mb=80.0)
    floor_v = variant(cold_start_ms=110.0, peak_rss_mb=66.0)
    assert metrics.attributable(v, floor_v) == {
        "attributable_cold_start_ms": 40.0,
        "attributable_peak_rss_mb": 14.0,
    }
    assert metrics.attributable(v, None)["attributable_peak_rss_mb"] is None


def test_accuracy_budget_is_judged_on_the_worst_set() -> None:
    shipped = variant(
        ships_mb=5.0, warm_p50_ms=3.0, peak_rss_mb=70.0, sets={"clean": 0.9, "hard": 0.5}
    )
    ref = variant(sets={"clean": 0.9, "hard": 0.51})
    budgets = Budgets(max_size_mb=6, max_accuracy_drop_pts=0.5, max_warm_p50_ms=2.0)
    out = metrics.check_budgets(budgets, shipped, ref, None)
    assert out["max_accuracy_drop_pts"].model_dump() == {
        "limit": 0.5,
        "value": 1.0,
        "ok": False,
        "set": "hard",
    }
    assert out["max_size_mb"].ok is True and out["max_warm_p50_ms"].ok is False
    assert out["max_peak_rss_mb"].ok is None  # no limit set
    assert out["max_cpu_ratio"].ok is None  # no stock to compare with
    assert out["min_warm_speedup"].ok is None


def test_accuracy_budget_skips_sets_the_build_left_out_of_its_decisions() -> None:
    # a text-line model reads captchas at 4 %: its int8 build reads 0 %, which is noise
    shipped = variant(sets={"clean": 0.0, "lines": 0.955})
    ref = variant(sets={"clean": 0.045, "lines": 0.957})
    budgets = Budgets(max_accuracy_drop_pts=0.5)
    every = metrics.check_budgets(budgets, shipped, ref, None)["max_accuracy_drop_pts"]
    decided = metrics.check_budgets(budgets, shipped, ref, None, ["lines"])
    assert (every.set, every.ok) == ("clean", False)
    assert decided["max_accuracy_drop_pts"].model_dump() == {
        "limit": 0.5,
        "value": 0.2,
        "ok": True,
        "set": "lines",
    }


def test_speedup_budget_is_a_floor() -> None:
    shipped = variant(ships_mb=5.0, warm_p50_ms=3.0, peak_rss_mb=70.0, sets={"clean": 0.9})
    budgets = Budgets(min_warm_speedup=3.0)
    fast = metrics.check_budgets(budgets, shipped, shipped, Ratios(warm_speedup=3.4))
    slow = metrics.check_budgets(budgets, shipped, shipped, Ratios(warm_speedup=2.9))
    assert fast["min_warm_speedup"].ok is True
    assert slow["min_warm_speedup"].model_dump()["ok"] is False


def test_core_slots_are_disjoint_and_cover_the_threads() -> None:
    assert spawn.core_slots(1, [0, 1]) == [[0], [1]]
    assert spawn.core_slots(2, [0, 1]) == [[0, 1]]
    assert spawn.core_slots(4, [0, 1]) == [[0, 1]]
    assert machine.pinned_cores(2, [3, 1, 2]) == [1, 2]


@pytest.mark.parametrize(
    ("scope", "expected"), [("shipped", ["bundle"]), ("all", ["final", "bundle"])]
)
def test_long_session_scope_chooses_the_variants(
    monkeypatch: pytest.MonkeyPatch, scope: str, expected: list[str]
) -> None:
    variants = [
        Variant("final", "onnx", 1.0),
        Variant("bundle", "bundle", 1.0, long_session=True),
        Variant("gone", "onnx", None, long_session=True, skipped="not installed"),
    ]
    specs: list[dict[str, Any]] = []
    monkeypatch.setattr(spawn, "spawn", lambda spec: specs.append(spec) or {"ok": 1})
    params = BenchParams(long_session=7, long_session_scope=scope)
    out = spawn.long_sessions(variants, [], params, 1, "test")
    assert sorted(out) == sorted(expected)
    assert sorted(s["variant"] for s in specs) == sorted(expected)
    assert {s["long_session"] for s in specs} == {7}


def test_machine_file_holds_the_facts_and_is_rewritten_only_when_they_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "machine.json"
    out.write_text(json.dumps({**machine.machine_info(), "cpu": "another cpu"}))
    assert machine.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text()) == machine.machine_info()
    assert "written: the measuring stages will rerun" in capsys.readouterr().out
    before = out.stat().st_mtime_ns
    assert machine.main(["--out", str(out)]) == 0
    assert out.stat().st_mtime_ns == before and "(unchanged)" in capsys.readouterr().out


def test_every_x86_kind_computes_the_same_int8_numbers_and_arm_kinds_stay_apart() -> None:
    """machine.json `numerics` keys the stages that compute int8 texts (build ... levers):
    AVX2 and VNNI machines share it (exact kernels), ARM with and without SME do not."""
    avx2 = machine.numerics("x86_64", frozenset({"avx2", "fma"}))
    vnni = machine.numerics("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8"}))
    assert avx2 == vnni == {"arch": "x86_64", "int8": []}
    a76 = machine.numerics("aarch64", frozenset({"asimd", "asimddp"}))
    sme = machine.numerics("aarch64", frozenset({"asimd", "asimddp", "i8mm", "sme"}))
    assert a76 == {"arch": "aarch64", "int8": ["asimddp"]} and sme["int8"][-1] == "sme"
    assert machine.machine_info()["numerics"] == machine.numerics()


def test_the_committed_metrics_were_measured_on_the_committed_machine() -> None:
    """DVC reuses committed figures where machine.json is equal: they must be its figures."""
    root = Path(__file__).resolve().parents[1]
    facts = json.loads((root / "machine.json").read_text())
    for name in ("high", "mid", "low", "serve"):
        record = json.loads((root / "metrics" / f"{name}.json").read_text())
        assert record["machine"] == facts, name


def test_variants_that_repeat_a_worker_are_timed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage that changed no byte, or final beside the last stage, repeats an earlier
    variant's worker: it is not spawned, and it gets that variant's runs."""
    a, b, c = (tmp_path / n for n in ("a.onnx", "b.onnx", "c.onnx"))
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"other")
    spec = {"preprocess": {"interpolation": "lanczos"}, "runtime": {"intra_op_threads": 1}}
    variants = [
        Variant("01-a", "onnx", 1.0, {"model": str(a), **spec}),
        Variant("02-b", "onnx", 1.0, {"model": str(b), **spec}),
        Variant("03-c", "onnx", 1.0, {"model": str(c), **spec}),
        Variant("final", "onnx", 1.0, {"model": str(c), **spec}),
        # same bytes, other settings: a worker of its own
        Variant("mem:x", "onnx", 1.0, {"model": str(c), **spec, "runtime": {"arena": False}}),
        Variant("stock", "stock", 1.0, {"stock": "beta"}),
    ]
    alias = spawn.same_worker(variants)
    assert alias == {"02-b": "01-a", "final": "03-c"}
    spawned: list[str] = []
    monkeypatch.setattr(
        spawn, "spawn", lambda s: spawned.append(s["variant"]) or {"v": s["variant"]}
    )
    runs = spawn.measure(variants, [], BenchParams(repeats=2), [0], "test", alias)
    assert sorted(set(spawned)) == ["01-a", "03-c", "mem:x", "stock"]
    assert len(spawned) == 8
    assert runs["02-b"] == runs["01-a"] == [{"v": "01-a"}] * 2
    assert runs["final"] == [{"v": "03-c"}] * 2


def test_rounds_interleave_and_the_first_round_decides_how_many_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every variant once per round, in order; `rounds` sees the first round's runs and its
    seconds and says how many rounds run in all (the bench's time budget)."""
    variants = [Variant(n, "onnx", 1.0, {"model": n}) for n in ("a", "b")]
    spawned: list[str] = []
    monkeypatch.setattr(spawn, "spawn", lambda s: spawned.append(s["variant"]) or {"v": 1})
    seen: list[tuple[list[str], float]] = []

    def rounds(first: dict[str, list[dict[str, Any]]], round_s: float) -> int:
        seen.append((sorted(first), round_s))
        assert all(len(r) == 1 for r in first.values())
        return 3

    runs = spawn.measure(variants, [], BenchParams(repeats=5), [0], "test", {}, rounds)
    assert spawned == ["a", "b"] * 3 and len(runs["a"]) == len(runs["b"]) == 3
    assert seen[0][0] == ["a", "b"] and seen[0][1] >= 0
    spawned.clear()
    spawn.measure(variants, [], BenchParams(repeats=2), [0], "test")
    assert spawned == ["a", "b", "a", "b"]


def test_long_sessions_run_the_calls_they_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    variants = [Variant("bundle", "bundle", 1.0, long_session=True)]
    specs: list[dict[str, Any]] = []
    monkeypatch.setattr(spawn, "spawn", lambda spec: specs.append(spec) or {"ok": 1})
    params = BenchParams(long_session=1000)
    spawn.long_sessions(variants, [], params, 1, "test", calls=250)
    assert [s["long_session"] for s in specs] == [250]
    assert spawn.long_sessions(variants, [], params, 1, "test", calls=0) == {}


# ---------------------------------------------------------------------------- floors


def test_count_macs_matches_the_tiny_models_hand_count() -> None:
    classes, features, hidden, width = 7, 8, 6, 40
    model = tiny.tiny_ctc(classes, features, hidden)
    steps = width // 2  # Conv kernel 8x2, stride (8, 2)
    macs = floor.count_macs(model, tiny.inputs(1, widths=(width,))[0])
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
    fp32 = floor.count_macs(model, x)
    int8 = floor.count_macs(onnx.load(str(tmp_path / "q.onnx")), x)
    assert fp32["int8"] == 0 and fp32["fp32"] == fp32["total"]
    assert int8["total"] == fp32["total"]
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
    model.graph.node.insert(
        0, helper.make_node("DequantizeLinear", ["conv_w_q", "conv_w_s"], ["conv_w"])
    )
    macs = floor.count_macs(model, tiny.inputs(1, widths=(40,))[0])
    assert macs["int8"] == macs["Conv"] and macs["fp32"] == macs["LSTM"] + macs["Gemm"]


def test_matmul_rates_are_plausible() -> None:
    rates = floor.matmul_rates((32, 64), tries=2)
    assert set(rates) == {"fp32", "int8"}
    for rate, n in rates.values():
        assert n in (32, 64) and 1e7 < rate < 1e13


def test_params_yaml_floor_sizes_are_the_bench_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench.floor_sizes: parsed from the committed params.yaml, and what the bench verb hands
    run_bench (which times those sizes: test_ratios_budgets_memory_table_and_facts)."""
    root = Path(__file__).resolve().parents[1]
    committed = yaml.safe_load((root / "params.yaml").read_text())["bench"]["floor_sizes"]
    assert load_params(root / "params.yaml").bench.floor_sizes == committed
    params = {
        "targets": ["low"],
        "model": {"source": "file", "path": "models/input/m.onnx"},
        "data": {"synthetic": {"clean": {"seed": 1}}},
        "bench": {"floor_sizes": [48, 96]},
        "versions": {},
        "overrides": {"low": {}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    got: list[BenchParams] = []

    def bench(_inputs: Any, _recipe: Any, _contract: Any, params: BenchParams) -> Any:
        got.append(params)
        return BenchRecord.model_construct(ratios=None)

    monkeypatch.setattr("stages.measure.bench.run_bench", bench)
    monkeypatch.setattr("stages.build.read_recipe", lambda _dir: None)
    monkeypatch.setattr("stages.contract.read_contract", lambda _dir: None)
    monkeypatch.setattr("stages.records.write_record", lambda *_a: None)
    argv = ["bench", "--params", str(tmp_path / "params.yaml"), "--target", "low"]
    argv += ["--model", "m", "--data", "d", "--build", "b", "--eval", "e"]
    argv += ["--bundle", "u", "--baselines", "s", "--verify", "v", "--clients", "c", "--out", "o"]
    assert cli.main(argv) == 0
    assert [p.floor_sizes for p in got] == [[48, 96]]

    params["bench"] = {"floor_sizes": [256, 0]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(RecipeError) as info:
        load_params(tmp_path / "params.yaml")
    assert info.value.field == "bench.floor_sizes[1]" and "given: 0" in str(info.value)


def test_runtime_floor_model_keeps_the_contract_and_decodes_to_nothing() -> None:
    spec = modelio.spec(tiny.tiny_ctc(wrong_output_shape=False))
    model = floor.floor_model(spec, Preprocess(height=tiny.HEIGHT))
    onnx.checker.check_model(model, full_check=True)
    assert tiny.op_counts(model) == {"AveragePool": 1, "Squeeze": 1, "Transpose": 1, "MatMul": 1}
    assert modelio.spec(model).charset == spec.charset
    out = tiny.run(model, tiny.inputs(1, widths=(32,))[0])
    assert out.shape == (4, 1, 7)  # ddddocr's stride of 8 columns per step
    assert decode(out, spec.charset).text == ""


# ---------------------------------------------------------------------------- workers


def onnx_spec(measured: dict, cores: list[int], **extra: Any) -> dict[str, Any]:
    build = measured["builds"] / "low" / "model"
    recipe = json.loads((build / "recipe.json").read_text())["recipe"]
    v = Variant(
        "final",
        "onnx",
        1.0,
        {
            "model": str(build / "model.onnx"),
            "preprocess": recipe["preprocess"],
            "runtime": recipe["runtime"],
        },
    )
    images = sorted((measured["root"] / "data" / "clean" / "eval").glob("*.png"))
    spec = spawn.worker_spec(v, images, BenchParams(repeats=1, warm_images=2, warmup=0), cores, 0)
    return spec | extra


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_worker_pins_itself_to_the_cores_it_is_given(measured: dict) -> None:
    last = sorted(os.sched_getaffinity(0))[-1]
    out = spawn.spawn(onnx_spec(measured, [last]), timeout_s=120)
    assert out["affinity"] == [last] and out["thread_affinity"] == [last]
    assert out["cold_start_ms"] > 0 and len(out["total_ms"]) == 2
    assert out["import_ms"] > 0 and out["session_ms"] > 0 and out["first_ms"] > 0
    assert out["cpu_s"] > 0


def test_failed_worker_names_the_variant_and_quotes_stderr(measured: dict) -> None:
    spec = onnx_spec(measured, [0], model="/no/such/model.onnx")
    with pytest.raises(spawn.BenchError, match=r"variant 'final' failed \(exit code 1\)") as e:
        spawn.spawn(spec, timeout_s=120)
    assert "no/such/model.onnx" in str(e.value)


def test_long_session_run_reports_resident_memory_growth(measured: dict) -> None:
    out = spawn.spawn(onnx_spec(measured, [0], long_session=25), timeout_s=120)
    assert len(out["total_ms"]) == 25 and len(out["texts"]) == 2
    assert out["rss_end_mb"] > 0 and out["rss_warm_mb"] > 0 and out["rss_half_mb"] > 0


class _Holding(worker.Runner):
    """A fake recognizer that keeps `per_call` MB on each call and `step` MB more on its
    second, the first one measured (the worker's first call is the cold start's). It holds
    fresh anonymous pages: memory from malloc could reuse what earlier tests in the same
    pytest worker freed, which VmRSS already counts, and not grow at all."""

    def __init__(self, spec: dict[str, Any], step: float, per_call: float) -> None:
        super().__init__(spec)
        self.step, self.per_call, self.held = step, per_call, []

    def import_libs(self) -> None:
        pass

    def load(self) -> None:
        pass

    def recognize(self, data: bytes) -> str:
        size = int((self.per_call + (self.step if len(self.held) == 1 else 0.0)) * 2**20)
        pages = mmap.mmap(-1, max(size, 1))
        for at in range(0, size, mmap.PAGESIZE):  # written, so resident
            pages[at] = 1
        self.held.append(pages)
        return "ab"


@pytest.mark.parametrize(("step", "per_call", "late"), [(0.0, 0.2, 10.0), (20.0, 0.0, 0.0)])
def test_a_leak_grows_in_the_second_half_and_a_one_time_step_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: float, per_call: float, late: float
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    monkeypatch.setitem(worker.RUNNERS, "onnx", lambda spec: _Holding(spec, step, per_call))
    spec = {"kind": "onnx", "variant": "v", "images": [str(image)], "warmup": 0,
            "long_session": 100, "warm_images": 2,
            "cores": sorted(os.sched_getaffinity(0))}  # fmt: skip
    out = worker.measure(spec)
    growth, second = out["rss_end_mb"] - out["rss_warm_mb"], out["rss_end_mb"] - out["rss_half_mb"]
    # 0.2 MB a call over 100 calls: 20 MB, 10 of them in the second half; a 20 MB step on
    # the first measured call: all of it in the first half
    assert growth == pytest.approx(20.0, abs=3.0) and second == pytest.approx(late, abs=3.0)


@pytest.mark.integration
def test_stock_ddddocr_worker_times_its_session(measured: dict) -> None:
    v = Variant("stock_default", "stock", 13.6, {"stock": "old"})
    images = sorted((measured["root"] / "data" / "clean" / "eval").glob("*.png"))
    params = BenchParams(repeats=1, warm_images=2, warmup=0)
    out = spawn.spawn(spawn.worker_spec(v, images, params, [0], 0), timeout_s=300)
    assert out["affinity"] == [0] and "ddddocr" in out["imported"]
    # onnxruntime's default pool would pin a thread per machine core; sized to the 1 core here
    assert out["thread_affinity"] == [0] and out["ort_threads"] == 1
    assert out["escaped_threads"] == 0
    assert len(out["model_ms"]) == 2 and all(t > 0 for t in out["model_ms"])


# ---------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def low(measured: dict) -> BenchRecord:
    return read_record(measured["metrics"] / "low.json", BenchRecord)


def test_every_variant_is_measured(low: BenchRecord) -> None:
    names = list(low.variants)
    assert names[:3] == ["stock", "naive_int8", "reference"]
    assert {"01-fix_output_shape", "02-prune_charset", "03-quantize_to_tolerance"} <= set(names)
    assert {"final", "bundle", "bundle+fallback", "mem:recipe"} <= set(names)
    assert {"mem:enable_cpu_mem_arena=off", "mem:enable_mem_pattern=off"} <= set(names)
    assert "mem:ort_bytes_for_initializers=on" in names  # the bundle ships .ort
    assert {"runtime_floor", "runtime_floor_bundle"} <= set(names)
    assert "runtime_floor_stock" not in names  # a file source's stock runs in our own runner
    for name, v in low.variants.items():
        assert v.skipped is None, name
        assert v.cold_start_ms and v.warm_p50_ms and v.peak_rss_mb and v.cpu_s_per_1000, name
        assert v.import_ms and v.session_ms is not None and v.first_ms, name
        assert len(v.spread["warm_p50_ms"]) == 2, name


def test_attributable_figures_use_the_floor_of_the_same_kind(low: BenchRecord) -> None:
    v, floor_v = low.variants["bundle"], low.variants["runtime_floor_bundle"]
    assert v.floor == "runtime_floor_bundle"
    assert v.attributable_peak_rss_mb == round(max(v.peak_rss_mb - floor_v.peak_rss_mb, 0), 1)
    assert low.variants["final"].floor == "runtime_floor"
    assert low.variants["stock"].floor == "runtime_floor"


def test_long_sessions_for_deployable_variants_only(low: BenchRecord) -> None:
    for name in ("stock", "bundle", "bundle+fallback", "runtime_floor"):
        assert (
            low.variants[name].long_session == 30 and low.variants[name].rss_growth_mb is not None
        )
    arena = [n for n in low.variants if n.startswith("mem:enable_cpu_mem_arena=")]
    assert arena and low.variants[arena[0]].rss_growth_mb is not None
    for name in ("02-prune_charset", "final", "mem:recipe"):  # same model as the bundle
        assert low.variants[name].rss_growth_mb is None


def test_bundle_sizes_and_accuracy_are_its_own(low: BenchRecord, measured: dict) -> None:
    doc = json.loads((measured["root"] / "bundles" / "low" / "manifest.json").read_text())
    b = low.variants["bundle"]
    assert b.ships_mb and b.optional_mb and b.size_mb == b.ships_mb
    assert low.variants["bundle+fallback"].size_mb == round(b.ships_mb + b.optional_mb, 3)
    assert doc["optional"] == ["fallback.ort", "required_operators.config"]
    assert set(b.sets) == {"clean", "hard"}
    assert low.variants["bundle+fallback"].fallback_loaded is True


def test_accuracy_per_set_comes_from_the_records(low: BenchRecord, measured: dict) -> None:
    evaluation = json.loads((measured["builds"] / "low" / "eval.json").read_text())
    for name in ("reference", "final", "02-prune_charset"):
        for s in ("clean", "hard"):
            assert (
                low.variants[name].sets[s].accuracy
                == evaluation["variants"][name]["sets"][s]["accuracy"]
            )
    assert low.variants["mem:recipe"].sets == low.variants["final"].sets


def test_ratios_budgets_memory_table_and_facts(low: BenchRecord) -> None:
    assert low.ratios is not None and low.bundle_ratios is not None
    assert set(low.bundle_ratios.accuracy_drop_pts) == {"clean", "hard"}
    assert set(low.bundle_ratios_spread) >= {"warm_speedup", "cpu"}
    assert low.budgets["max_size_mb"].ok is True  # a few KB against 1 MB
    assert low.budgets["max_attributable_rss_ratio"].ok is False  # an impossible limit
    assert (low.memory_settings[0].variant, low.memory_settings[0].setting) == (
        "mem:recipe",
        "recipe",
    )
    assert low.machine["cpu"] and "isa" in low.machine
    assert low.dataset["eval_images"] == {"clean": 10, "hard": 10}
    assert low.stock.startswith("the source model")
    assert low.threads == 1 and low.affinity == [sorted(os.sched_getaffinity(0))[0]]
    assert low.compute_floor["final"]["mmacs"]["total"] > 0
    # PARAMS.floor_sizes (tests/measured.py), not params.yaml's defaults
    assert low.compute_floor["rate_op"].startswith("onnxruntime MatMul fp32 32^3 / MatMulInteger")


def test_the_budget_is_recorded_and_a_machine_over_it_runs_the_floors(
    low: BenchRecord, measured: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture's bench ran as asked (its counts are under the floors); rerun with a budget
    no machine meets, low's bench runs 3 of 4 rounds and 200 of 400 calls and says so."""
    from measured import PARAMS, SOURCES

    from stages.build import read_recipe
    from stages.contract import read_contract
    from stages.measure.bench import run_bench
    from stages.measure.variants import BenchInputs
    from stages.report.class_page import facts

    ds = low.dataset
    assert (ds["repeats"], ds["long_session"], ds["budget_minutes"]) == (2, 30, 3.0)
    assert "asked" not in ds and ds["projected_minutes"] >= 0
    root = measured["root"]
    inputs = BenchInputs(
        target="low",
        source=root / "models" / "source",
        build=root / "build" / "low" / "model",
        eval_json=root / "build" / "low" / "eval.json",
        bundle=root / "bundles" / "low",
        baselines=root / "baselines",
        data=root / "data",
        sets=list(SOURCES),
        verify=root / "verify" / "low.json",
        clients=root / "verify" / "clients" / "low.json",
    )
    real, calls = spawn.spawn, []
    monkeypatch.setattr(spawn, "spawn", lambda spec: calls.append(spec) or real(spec))
    params = PARAMS.model_copy(update={"repeats": 4, "long_session": 400, "budget_minutes": 1e-4})
    record = run_bench(inputs, read_recipe(inputs.build), read_contract(inputs.source), params)
    ds = record.dataset
    assert (ds["repeats"], ds["long_session"]) == (3, 200)
    assert ds["asked"] == {"repeats": 4, "long_session": 400}
    timed = [c["variant"] for c in calls if not c["long_session"]]
    assert timed.count("bundle") == 3 and timed.count("stock") == 3
    assert {c["long_session"] for c in calls if c["long_session"]} == {200}
    assert record.variants["bundle"].long_session == 200
    assert "ran 3 rounds and long sessions of 200 calls where params.yaml asks 4 and 400" in (
        facts(record)
    )


def test_timed_accuracy_compares_texts_by_the_contract_s_scoring():
    from stages.measure.bench import variant_record
    from stages.scoring import Scoring

    run = {"total_ms": [1.0, 1.0, 1.0], "cold_start_ms": 9.0, "peak_rss_mb": 50.0,
           "texts": [" ab", "CD ", "ef"], "ort_threads": 1, "os_threads": 1,
           "escaped_threads": 0, "imported": []}  # fmt: skip
    v = Variant("x", "onnx", 1.0)
    labels = ["ab", "cd"]  # the worker cycles through them: ab, cd, ab
    plain = variant_record(v, [run], None, None, labels, Scoring(strip=True))
    folded = variant_record(v, [run], None, None, labels, Scoring(strip=True, casefold=True))
    assert (plain.timed_accuracy, folded.timed_accuracy) == (0.3333, 0.6667)
