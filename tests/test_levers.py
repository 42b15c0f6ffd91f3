"""The levers stage: variants of a class's pass options built with its decision data and
scored against the float model it quantizes (stages/levers.py), and their report section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import builders
import pytest

import stages.levers as levers
from stages.data.dataset import read_sets
from stages.errors import RecipeError
from stages.evaluate import EvalSets
from stages.levers import compare, float_stage, interleaved_ms, measure_class
from stages.params import LeverParams
from stages.recipe import patched
from stages.records import (
    BuildRecord,
    LeverRecord,
    LeverRow,
    LeverSet,
    read_record,
    write_record,
)
from stages.report.levers import Limits, levers_section, limits_of, verdict
from stages.scoring import Scoring

PASSES = [
    {"fix_output_shape": {}},
    {"quantize_dynamic": {"op_types": ["LSTM", "Gemm", "MatMul"], "per_channel": False}},
]
PASS_NAMES = ["fix_output_shape", "quantize_dynamic"]
LOOSE = {"min_agreement": 0.0, "max_accuracy_drop_pts": 100.0}


def built(factory: pytest.TempPathFactory, passes: list) -> Path:
    """A project with a source, data and class `low` built with `passes`."""
    root = factory.mktemp("levers")
    builders.write_source(root)
    builders.write_data(root)
    builders.build_class(root, "low", passes)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, PASSES)


def measure(
    root: Path, variants: dict, eval_images: int | None = None, passes: list = PASSES,
    workers: int = 1, noise: tuple[float, ...] = (),
) -> LeverRecord:  # fmt: skip
    build = root / "build" / "low" / "model"
    rec = builders.recipe(passes)
    fields = measure_class(
        "low", root / "models" / "source", build, builders.context(root, rec),
        EvalSets(read_sets(root / "data", ["clean", "hard"], "eval")), variants, Scoring(),
        eval_images, 4, 2, workers=workers, noise=noise,
    )  # fmt: skip
    return LeverRecord(target="low", machine={"cpu": "test", "isa": []}, eval_images=eval_images,
                       timing_images=4, timing_rounds=2, **fields)  # fmt: skip


def test_compare_counts_agreement_flips_and_the_accuracy_change():
    sets = {"s": ([None] * 4, ["ab", "cd", "ef", "gh"])}
    got = compare({"s": ["ab", "xx", "ef", "gh "]}, {"s": ["ab", "cd", "zz", "gh"]}, sets,
                  Scoring())  # fmt: skip
    # float: ab cd right, zz wrong, gh right (3/4); variant: ab right, xx wrong, ef right,
    # "gh " right after strip (3/4)
    assert got["s"] == LeverSet(images=4, accuracy=0.75, accuracy_delta_pts=0.0, agreement=0.5,
                                right_to_wrong=1, wrong_to_right=1)  # fmt: skip


def test_the_float_model_is_the_input_of_the_first_lossy_pass(project: Path):
    build = project / "build" / "low" / "model"
    record = read_record(build / "build.json", BuildRecord)
    got = float_stage(record, build, Path("src.onnx"))
    assert got == build / "stages" / "01-fix_output_shape.onnx"


def test_shipped_row_then_variants_each_built_and_scored(project: Path):
    lev = measure(project, {
        "same": {"quantize_dynamic": {}},
        "per_channel": {"quantize_dynamic": {"per_channel": True}},
        "lstm_only": {"quantize_dynamic": {"op_types": ["LSTM"]}},
    }, eval_images=6)  # fmt: skip
    rows = {r.name: r for r in lev.rows}
    assert [r.name for r in lev.rows] == ["shipped", "same", "per_channel", "lstm_only"]
    assert lev.float_model == "01-fix_output_shape.onnx" and lev.float_warm_ms > 0
    shipped = rows["shipped"]
    assert set(shipped.val) == {"clean", "hard"} and set(shipped.eval) == {"clean", "hard"}
    assert all(s.images == 6 for s in shipped.eval.values())
    assert all(s.images == builders.SIZES["val"] for s in shipped.val.values())
    # an empty patch rebuilds the shipped model: the same figures, so a row measures its patch
    same = rows["same"]
    assert (same.size_mb, same.val, same.eval) == (shipped.size_mb, shipped.val, shipped.eval)
    # the Gemm left float reads differently here: the patch reached the build
    lstm_only = rows["lstm_only"]
    assert (lstm_only.val, lstm_only.eval) != (shipped.val, shipped.eval)
    assert rows["per_channel"].patch == {"quantize_dynamic": {"per_channel": True}}
    for r in lev.rows:
        assert r.error is None and r.warm_ms > 0
        for s in [*r.val.values(), *r.eval.values()]:
            assert 0.0 <= s.agreement <= 1.0
            flipped = s.right_to_wrong + s.wrong_to_right
            assert flipped <= round((1 - s.agreement) * s.images)
    # the record round-trips through its file
    path = project / "levers.json"
    write_record(path, lev)
    assert read_record(path, LeverRecord) == lev


def test_variants_built_in_worker_processes_read_as_built_in_this_one(project: Path):
    """The stage builds variants on every core; a row must not depend on where it was built
    (only its time is measured afterwards, in this process)."""
    variants = {
        "per_channel": {"quantize_dynamic": {"per_channel": True}},
        "lstm_only": {"quantize_dynamic": {"op_types": ["LSTM"]}},
        "refused": {"quantize_dynamic": {"nodes_to_quantize": ["no_such_node"]}},
    }
    one, two = (measure(project, variants, eval_images=6, workers=w) for w in (1, 2))

    def untimed(lev: LeverRecord) -> list:
        return [r.model_copy(update={"warm_ms": None}) for r in lev.rows]

    assert [r.name for r in two.rows] == ["shipped", *variants]
    assert untimed(one) == untimed(two)
    assert two.rows[-1].error and all(r.warm_ms for r in two.rows[:-1])


def test_a_variant_starts_from_the_builds_stage_before_its_first_patched_pass(
    project: Path, monkeypatch
):
    """The passes before the first one a patch changes are the build's: their output is the
    build's stage file, so only the rest run (and give what a full rebuild gives: `same`
    above equals shipped)."""
    runs = []
    real = levers.run_passes

    def spy(model, recipe, context):
        runs.append([p.name for p in recipe.passes])
        return real(model, recipe, context)

    monkeypatch.setattr(levers, "run_passes", spy)
    lev = measure(project, {
        "tail": {"quantize_dynamic": {"per_channel": True}},
        "head": {"fix_output_shape": {"infer_shapes": False}},
    })  # fmt: skip
    assert [r.error for r in lev.rows] == [None, None, None]
    assert runs == [["quantize_dynamic"], PASS_NAMES]
    first = levers.shared_prefix
    rec = builders.recipe(PASSES)
    assert first(rec, rec) == 1  # nothing patched: the last pass still reruns
    assert first(rec, patched(rec, {"fix_output_shape": {"infer_shapes": False}}, "t")) == 0


def test_a_gate_the_pass_cannot_meet_is_recorded_with_its_message(project: Path):
    variants = {"strict": {"quantize_dynamic": None, "fix_output_shape": {}}}
    # dropping the only lossy pass leaves a float model: nothing to refuse, agreement 1.0
    lev = measure(project, variants)
    assert lev.rows[1].error is None
    assert all(s.agreement == 1.0 for s in lev.rows[1].val.values())
    tolerance = [
        {"fix_output_shape": {}},
        {"quantize_to_tolerance": {"static_op_types": [], "min_agreement": 1.0,
                                   "max_accuracy_drop_pts": 0.0}},
    ]  # fmt: skip
    root = project / "strict"
    builders.write_source(root)
    builders.write_data(root)
    builders.build_class(root, "low", [tolerance[0], {"quantize_to_tolerance": {
        "static_op_types": [], **LOOSE}}])  # fmt: skip
    lev = measure(
        root, {"gate_1": {"quantize_to_tolerance": tolerance[1]["quantize_to_tolerance"]}}
    )
    row = lev.rows[1]
    assert row.error is not None and "no variant" in row.error and "agreement" in row.error
    assert row.val == {} and row.size_mb is None


def test_a_patch_naming_a_pass_the_recipe_lacks_is_refused_naming_the_variant():
    rec = builders.recipe(PASSES)
    with pytest.raises(RecipeError, match=r"levers.variants.low.x.*no such pass.*fix_output"):
        patched(rec, {"prune_charset": {}}, "params.yaml: levers.variants.low.x")


def test_report_section_shows_every_row_and_the_refused_ones(project: Path):
    lev = measure(project, {"per_channel": {"quantize_dynamic": {"per_channel": True}}})
    refused = lev.rows[1].model_copy(update={"name": "gate", "error": "no variant met it"})
    lev = lev.model_copy(update={"rows": [*lev.rows, refused]})
    text = "\n\n".join(levers_section(lev))
    assert "| shipped | none |" in text and "| per_channel | none |" in text
    assert "`gate` refused: no variant met it" in text
    assert "val clean" in text and "hard (eval)" in text and "01-fix_output_shape.onnx" in text
    assert levers_section(None) == [] and levers_section(lev.model_copy(update={"rows": []})) == []


STATIC = [{"fix_output_shape": {}}, {"quantize_static": {"op_types": ["Conv", "Gemm"]}}]


@pytest.fixture(scope="module")
def static_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory, STATIC)


def test_a_static_group_is_scored_in_parts_untimed_and_reported(static_project: Path):
    lev = measure(static_project, {}, passes=STATIC)
    assert [r.name for r in lev.rows] == ["shipped"]
    parts = {r.name: r for r in lev.split}
    # the halves, then one row per op type whose outputs the group quantizes
    by_kind = [levers.float_after_name(k) for k in ("Conv", "Gemm", "Reshape", "graph input")]
    assert list(parts) == [levers.WEIGHTS_ONLY, levers.ACTIVATIONS_ONLY, *by_kind]
    for r in parts.values():
        assert r.error is None and r.warm_ms is None and set(r.eval) == {"clean", "hard"}
        assert all(0.0 <= s.agreement <= 1.0 for s in r.eval.values())
    text = "\n\n".join(levers_section(lev))
    assert "Which part of the static int8 group" in text
    assert f"| {levers.WEIGHTS_ONLY} | " in text and f"| {levers.ACTIVATIONS_ONLY} | " in text
    assert "| Conv outputs float | " in text and "| graph input float | " in text


def test_a_half_that_cannot_be_made_is_recorded_with_why(static_project: Path, monkeypatch):
    def no_twin(model, float_model):
        raise ValueError("node 'conv' (Conv) reads a dequantized initializer, but ...")

    monkeypatch.setattr(levers, "activations_only", no_twin)
    lev = measure(static_project, {}, passes=STATIC)
    assert lev.split[0].error is None
    assert lev.split[1].name == levers.ACTIVATIONS_ONLY and "node 'conv'" in lev.split[1].error
    assert "not split: node 'conv'" in "\n\n".join(levers_section(lev))


def test_the_float_model_is_scored_with_its_weights_slightly_and_much_changed(project: Path):
    lev = measure(project, {}, noise=(0.0001, 0.5))
    rows = {r.name: r for r in lev.fragility}
    assert list(rows) == [levers.FP16, levers.noise_name(0.0001), levers.noise_name(0.5)]
    assert levers.noise_name(0.003) == "float model, each weight ± 0.3 % at random"
    for r in rows.values():
        assert r.error is None and r.warm_ms is None and r.float_nodes == []
        assert set(r.val) == set(r.eval) == {"clean", "hard"}
    # a 0.01 % change keeps the tiny model's texts; half of each weight reads none of them
    small, large = rows[levers.noise_name(0.0001)], rows[levers.noise_name(0.5)]
    assert all(s.agreement == 1.0 for s in [*small.val.values(), *small.eval.values()])
    assert all(s.agreement < 0.5 for s in [*large.val.values(), *large.eval.values()])
    text = "\n\n".join(levers_section(lev))
    assert "How fragile the float model's texts are" in text
    assert f"| {levers.noise_name(0.5)} | " in text and "val hard" in text


def test_a_dynamic_only_class_has_no_halves(project: Path):
    assert measure(project, {}).split == []


def test_every_model_is_timed_in_interleaved_rotated_rounds(project: Path, monkeypatch):
    """Each round times every model on every image, starting one model later than the round
    before, so no model is timed only in one slow moment of the machine."""
    model = (project / "build" / "low" / "model" / "model.onnx").read_bytes()
    calls: list[str] = []
    real = levers.run
    monkeypatch.setattr(levers, "run", lambda s, x: calls.append(s.name) or real(s, x))
    sessions = levers.make_session

    def named(data, rt):
        session = sessions(data, rt)
        session.name = names[len(made)]
        made.append(session.name)
        return session

    names, made = ["a", "b", "c"], []
    monkeypatch.setattr(levers, "make_session", named)
    xs = builders.context(project, builders.recipe(PASSES)).calibration[:2]
    ms = interleaved_ms(dict.fromkeys(names, model), xs, builders.recipe(PASSES).runtime, 3)
    assert set(ms) == set(names) and all(v > 0 for v in ms.values())
    timed = calls[3 * min(levers.WARMUP, len(xs)) :]  # after each model's warm-up runs
    firsts = [timed[i * 3 * len(xs)] for i in range(3)]  # the first model of each round
    assert firsts == ["a", "b", "c"]
    assert len(timed) == 3 * 3 * len(xs)


def test_a_variant_may_not_be_called_shipped():
    with pytest.raises(ValueError, match="shipped"):
        LeverParams(variants={"low": {"shipped": {"quantize_dynamic": {}}}})


def _row(name: str, size_mb: float, warm_ms: float, a: float, b: float) -> LeverRow:
    sets = {
        s: LeverSet(
            images=500,
            accuracy=0.5,
            accuracy_delta_pts=0.0,
            agreement=g,
            right_to_wrong=0,
            wrong_to_right=0,
        )
        for s, g in (("a", a), ("b", b))
    }
    return LeverRow(name=name, patch={}, size_mb=size_mb, warm_ms=warm_ms, eval=sets)  # fmt: skip


MACHINE = {"cpu": "test", "isa": []}
LIMITS = Limits(goal=0.97, max_ships_mb=6.0, min_speedup=3.0, ships_extra_mb=0.2,
                shipped_speedup=3.5, bench_machine=MACHINE)  # fmt: skip


def test_the_verdict_names_what_reaches_the_goal_and_what_fits_the_budgets():
    """A row's bundle is its model plus what the shipped bundle adds; its speed the shipped
    bundle's ratio to stock scaled by the two rows' levers times."""
    lev = LeverRecord(target="low", machine=MACHINE, eval_images=500, timing_images=10, rows=[
        _row("shipped", 5.0, 2.0, 0.95, 0.99),
        _row("big", 7.0, 4.0, 0.98, 0.99),    # goal met; 7.2 MB and 1.75x stock: over both
        _row("fast", 5.0, 1.0, 0.90, 0.96),   # 7.0x stock, within, but worse agreement
    ])  # fmt: skip
    text = verdict(lev, LIMITS)
    assert "| big | a 0.980 | 7.20 | 1.75× | yes | over: size, speed |" in text
    assert "| fast | a 0.900 | 5.20 | 7.00× | no | within |" in text
    assert (
        "Reach the goal: big (over: size, speed). Best within the budgets: shipped (a 0.95" in text
    )
    assert "Budgets: ships ≤ 6.0 MB, ≥ 3.0× stock" in text
    alone = verdict(lev.model_copy(update={"rows": lev.rows[:1]}), LIMITS)
    assert alone.endswith("Reach the goal: none. Best within the budgets: shipped (a 0.950).")
    assert text in "\n\n".join(levers_section(lev, LIMITS))
    assert "timed on" not in text  # the bench's machine timed the rows too
    # the first fragility row below the goal is named; none when every one reaches it
    fragile = [_row("float16", 0, 0, 0.99, 1.0), _row("0.3 %", 0, 0, 0.99, 0.96),
               _row("1 %", 0, 0, 0.90, 0.88)]  # fmt: skip
    named = verdict(lev.model_copy(update={"fragility": fragile}), LIMITS)
    assert named.endswith("misses the goal with its weights changed as little as in `0.3 %` "
                          '(b 0.960; "How fragile" above): there, the goal asks for outputs '
                          "closer to the float model's than that change leaves them.")  # fmt: skip
    assert verdict(lev.model_copy(update={"fragility": fragile[:1]}), LIMITS) == text


def test_the_verdict_says_when_the_rows_were_timed_on_another_machine():
    """levers reruns on machine.json's numerics, not on the x86 kind: a build on another x86
    machine keeps the rows, whose times are the levers machine's, and the verdict says so."""
    lev = LeverRecord(target="low", machine={"cpu": "vnni", "isa": ["avx512_vnni"]},
                      eval_images=500, timing_images=10,
                      rows=[_row("shipped", 5.0, 2.0, 0.95, 0.99)])  # fmt: skip
    other = dataclasses.replace(LIMITS, bench_machine={"cpu": "avx2", "isa": ["avx2"]})
    text = verdict(lev, other)
    assert "The rows were timed on vnni (avx512_vnni: with VNNI), the bench on avx2" in text
    assert "`dvc repro -f -s levers@low`" in text
    same_kind = dataclasses.replace(LIMITS, bench_machine=dict(lev.machine, numerics={}))
    assert "timed on" not in verdict(lev, same_kind)


def test_limits_come_from_the_bench_record_of_the_class():
    lev = LeverRecord(target="low", machine=MACHINE, eval_images=500, timing_images=10,
                      rows=[_row("shipped", 5.3, 3.0, 0.95, 0.99)])  # fmt: skip
    budget = lambda limit: SimpleNamespace(limit=limit)  # noqa: E731
    bench = SimpleNamespace(
        variants={"bundle": SimpleNamespace(ships_mb=5.55)},
        budgets={"max_size_mb": budget(6.0), "min_warm_speedup": budget(3.0)},
        bundle_ratios=SimpleNamespace(warm_speedup=3.79),
        machine=MACHINE,
    )
    limits = limits_of(bench, lev, 0.97)
    assert limits.max_ships_mb == 6.0 and limits.min_speedup == 3.0
    assert limits.ships_extra_mb == pytest.approx(0.25) and limits.shipped_speedup == 3.79
    assert limits_of(bench, lev.model_copy(update={"rows": []}), 0.97) is None


TOLERANCE = [
    {"fix_output_shape": {}},
    {"quantize_to_tolerance": {**LOOSE, "static_per_channel": False, "dynamic_op_types": []}},
]


def test_a_fine_tuned_variant_carries_what_its_training_did_into_the_report(
    tmp_path_factory: pytest.TempPathFactory,
):
    pytest.importorskip("torch")
    root = built(tmp_path_factory, TOLERANCE)
    patch = {"quantize_to_tolerance": {"qat_images": 4, "qat_epochs": 1, "qat_held_out": 2}}
    lev = measure(root, {"qat": patch}, passes=TOLERANCE)
    rows = {r.name: r for r in lev.rows}
    assert rows["shipped"].qat is None
    found = rows["qat"].qat
    assert (found.images, found.epochs, found.held_out_images) == (4, 1, 4)  # 2 per val set
    assert found.kl_before > 0 and found.held_out_kl_before > 0
    text = "\n\n".join(levers_section(lev))
    assert "What the fine-tune learned" in text
    trained = f"{found.kl_before:.3g} → {found.kl_after:.3g}"
    held = f"{found.held_out_kl_before:.3g} → {found.held_out_kl_after:.3g}"
    assert f"| qat | 4 × 1 | {trained} | 4 | {held} |" in text
    assert levers.fine_tune({"fix_output_shape": {}}) is None


KEPT = [
    {"fix_output_shape": {}},
    {"quantize_to_tolerance": {
        **LOOSE, "static_op_types": ["Conv", "Gemm"], "dynamic_op_types": [],
        "keep_float": ["conv"], "static_per_channel": False,
    }},
    {"fuse_silu": {}},
]  # fmt: skip


def test_a_variant_patching_a_pass_after_the_quantizer_keeps_its_float_nodes(
    tmp_path_factory: pytest.TempPathFactory,
):
    """The quantizer is among the passes a variant shares with the build: its report (which
    nodes stayed float) is the build's, not missing because only the later passes reran."""
    root = built(tmp_path_factory, KEPT)
    lev = measure(root, {
        "later": {"fuse_silu": {"only_after_dequantize": True}},
        "same": {},
    }, passes=KEPT)  # fmt: skip
    rows = {r.name: r for r in lev.rows}
    assert rows["shipped"].float_nodes == ["conv"]
    assert rows["later"].float_nodes == ["conv"] and rows["same"].float_nodes == ["conv"]
