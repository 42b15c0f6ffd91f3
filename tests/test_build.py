"""The build stage: per-pass equivalence checks and the atomic output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
import tiny
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict, Field

import stages.passes  # noqa: F401 - registers fix_output_shape and prune_charset
from stages import build, modelio, registry
from stages.build import run_passes, write_build
from stages.errors import PassError
from stages.passes.fix_output_shape import FixOutputShapeOptions
from stages.passes.prune_charset import PruneCharsetOptions
from stages.recipe import Equivalence, PassStep, Recipe
from stages.records import BuildRecord, CheckRecord, RecordError, read_record


class ScaleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    factor: float = Field(1.5, description="multiplies the classifier weights")


def _scaled_head(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == "head_w":
            t.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name)
            )
    return out


@pytest.fixture
def scale_passes():
    """Two temporary passes that scale the Gemm weights: one tagged exact, one lossy."""
    saved = dict(registry._PASSES)

    def _tmp_scale_exact(model, options, context):
        """Scale the head (wrongly tagged exact)."""
        return _scaled_head(model, options.factor)

    def _tmp_scale_lossy(model, options, context):
        """Scale the head (tagged lossy)."""
        return _scaled_head(model, options.factor)

    registry.register("_tmp_scale_exact", ScaleOptions, kind="fuse", exact=True)(_tmp_scale_exact)
    registry.register("_tmp_scale_lossy", ScaleOptions, kind="quantize", exact=False)(
        _tmp_scale_lossy
    )
    yield
    registry._PASSES.clear()
    registry._PASSES.update(saved)


def _recipe(*steps: PassStep, **fields) -> Recipe:
    return Recipe(description="test", passes=list(steps), **fields)


def _context(**kw) -> registry.PassContext:
    kw.setdefault("calibration", tiny.inputs(8))
    return registry.PassContext(**kw)


FIX = PassStep("fix_output_shape", FixOutputShapeOptions())
PRUNE = PassStep("prune_charset", PruneCharsetOptions())
CONTRACT = builders.contract_of(tiny.tiny_ctc())  # the source contract the build extends


# ---------------------------------------------------------------------------- run_passes


def test_exact_pass_records_zero_divergence():
    model = tiny.tiny_ctc()
    results = run_passes(model, _recipe(FIX), _context())
    assert len(results) == 1
    r = results[0]
    assert (r.index, r.name, r.filename) == (1, "fix_output_shape", "01-fix_output_shape.onnx")
    assert r.divergence == {
        "max_abs_diff": 0.0,
        "max_rel_diff": 0.0,
        "argmax_agreement": 1.0,
        "dropped_best": 0.0,
    }
    assert r.seconds > 0  # measured around the pass, not left at a default
    assert isinstance(r.model, onnx.ModelProto)


def test_passes_chain_and_pruning_compares_shared_classes():
    model = tiny.tiny_ctc()
    results = run_passes(model, _recipe(FIX, PRUNE), _context(allowed_chars="abc"))
    assert [(r.index, r.name) for r in results] == [(1, "fix_output_shape"), (2, "prune_charset")]
    assert results[1].filename == "02-prune_charset.onnx"
    assert modelio.spec(results[1].model).charset == ["", "a", "b", "c"]
    # the kept logits are unchanged: divergence is measured on the columns both models share
    div = results[1].divergence
    assert div["max_abs_diff"] < 1e-5
    assert div["argmax_agreement"] == 1.0
    # each pass got the previous pass's model
    out = tiny.run(results[1].model, tiny.inputs(1)[0])
    assert out.shape[-1] == 4


def test_no_calibration_images_is_an_error():
    with pytest.raises(PassError, match="no calibration images"):
        run_passes(tiny.tiny_ctc(), _recipe(FIX), _context(calibration=[]))


def test_equivalence_images_limits_the_probe(monkeypatch):
    seen = []
    real = build.outputs

    def counting(model, tensors, who="build"):
        seen.append(len(tensors))
        return real(model, tensors, who)

    monkeypatch.setattr(build, "outputs", counting)
    run_passes(tiny.tiny_ctc(), _recipe(FIX, equivalence=Equivalence(images=3)), _context())
    assert seen == [3, 3]


def test_broken_exact_pass_fails_naming_pass_and_tolerance(scale_passes):
    step = PassStep("_tmp_scale_exact", ScaleOptions())
    recipe = _recipe(FIX, step, equivalence=Equivalence(rtol=0.002, atol=0.003))
    with pytest.raises(PassError) as info:
        run_passes(tiny.tiny_ctc(), recipe, _context())
    err = info.value
    assert err.pass_name == "_tmp_scale_exact"
    msg = str(err)
    assert msg.startswith("pass '_tmp_scale_exact': changed the outputs on calibration image 0")
    assert "atol 0.003" in msg and "rtol 0.002" in msg
    assert "exact" in msg


def test_exact_pass_within_a_wide_tolerance_passes(scale_passes):
    step = PassStep("_tmp_scale_exact", ScaleOptions(factor=1.0001))
    results = run_passes(tiny.tiny_ctc(), _recipe(step), _context())
    assert 0 < results[0].divergence["max_abs_diff"] < 1e-3


def test_lossy_pass_with_the_same_effect_is_recorded(scale_passes):
    model = tiny.tiny_ctc()
    results = run_passes(model, _recipe(PassStep("_tmp_scale_lossy", ScaleOptions())), _context())
    div = results[0].divergence
    xs = tiny.inputs(8)
    ref = [tiny.run(model, x) for x in xs]
    new = [tiny.run(results[0].model, x) for x in xs]
    expected_abs = max(float(np.abs(a - b).max()) for a, b in zip(ref, new, strict=True))
    assert div["max_abs_diff"] == pytest.approx(expected_abs, rel=1e-5)
    assert div["max_abs_diff"] > 0.01
    assert div["max_rel_diff"] > 0
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref, new, strict=True))
    steps = sum(a.shape[0] for a in ref)
    assert div["argmax_agreement"] == pytest.approx(agree / steps)


def test_divergence_refuses_changed_shapes():
    a = [np.zeros((4, 1, 7), np.float32)]
    b = [np.zeros((5, 1, 7), np.float32)]
    with pytest.raises(PassError, match="output shape changed"):
        build.divergence(a, b)


def test_pruning_through_a_softmax_is_checked_as_exact_after_renormalizing():
    """prune_charset is tagged exact: on a probabilities output, the kept columns of the input
    renormalized over the kept classes must equal the pruned model's output."""
    model = _with_softmax(tiny.tiny_ctc(wrong_output_shape=False))
    results = run_passes(model, _recipe(PRUNE), _context(allowed_chars="abc"))
    assert results[0].exact is True
    assert results[0].divergence["max_abs_diff"] < 1e-5
    assert modelio.spec(results[0].model).kind == "probabilities"


def test_a_pass_whose_output_onnxruntime_cannot_load_is_named(scale_passes):
    def _tmp_break(model, options, context):
        """Return a graph onnxruntime refuses."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.node[0].op_type = "NoSuchOp"
        return out

    registry.register("_tmp_break", ScaleOptions, kind="fuse", exact=True)(_tmp_break)
    with pytest.raises(PassError) as info:
        run_passes(tiny.tiny_ctc(), _recipe(PassStep("_tmp_break", ScaleOptions())), _context())
    assert info.value.pass_name == "_tmp_break"
    assert "cannot load or run its output" in str(info.value)


def _with_softmax(model: onnx.ModelProto, op: str = "Softmax") -> onnx.ModelProto:
    """The tiny model with a final Softmax (probabilities contract) or LogSoftmax (its
    log-probabilities decode like logits) over the classes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.output[0].name
    out.graph.node.append(onnx.helper.make_node(op, [old], ["probs"], axis=-1))
    out.graph.output[0].name = "probs"
    spec = modelio.spec(model)
    kind = "probabilities" if op == "Softmax" else "logits"
    return modelio.with_spec(out, spec.charset, spec.layout, spec.blank, kind)


def test_pruning_through_a_log_softmax_is_checked_after_the_row_shift():
    model = _with_softmax(tiny.tiny_ctc(wrong_output_shape=False), "LogSoftmax")
    results = run_passes(model, _recipe(PRUNE), _context(allowed_chars="abc"))
    assert results[0].divergence["max_abs_diff"] < 1e-4


# ---------------------------------------------------------------------------- write_build


def _results(allowed="abc"):
    recipe = _recipe(FIX, PRUNE)
    return recipe, run_passes(tiny.tiny_ctc(), recipe, _context(allowed_chars=allowed))


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_write_build_writes_every_record(tmp_path):
    recipe, results = _results()
    out = tmp_path / "build" / "low" / "model"
    write_build(out, recipe, results, "low", contract=CONTRACT)
    files = set(_snapshot(out))
    assert files == {
        "stages/01-fix_output_shape.onnx",
        "stages/02-prune_charset.onnx",
        "model.onnx",
        "charset.json",
        "recipe.json",
        "build.json",
    }
    # no temp folder left next to it; timings and divergences beside the model folder
    assert sorted(p.name for p in out.parent.iterdir()) == ["checks.json", "model", "timings.json"]
    timings = json.loads((out.parent / "timings.json").read_text())["seconds"]
    assert set(timings) == {r.filename for r in results}
    assert (out / "model.onnx").read_bytes() == (out / "stages/02-prune_charset.onnx").read_bytes()
    final = modelio.load(out / "model.onnx")
    assert final.SerializeToString() == results[-1].model.SerializeToString()
    assert json.loads((out / "charset.json").read_text()) == ["", "a", "b", "c"]

    rec = json.loads((out / "recipe.json").read_text())
    assert rec["target"] == "low"
    assert rec["recipe"] == recipe.resolved()
    assert set(rec["versions"]) == set(build.LIBRARIES)
    # the source contract for the model the build made: prune_charset left 4 of tiny's classes
    assert CONTRACT.output.classes == len(modelio.spec(tiny.tiny_ctc()).charset) > 4
    contract = build.read_build_contract(out)
    assert contract.output.classes == 4 and contract.output.blank == 0
    assert contract.input == CONTRACT.input and contract.scoring == CONTRACT.scoring
    assert rec["contract"] == contract.dump() and rec["contract"]["charset"] == "charset.json"

    info = read_record(out / "build.json", BuildRecord)  # the reader's own type
    assert info.target == "low"
    assert [s.pass_name for s in info.stages] == ["fix_output_shape", "prune_charset"]
    for s, r in zip(info.stages, results, strict=True):
        assert s.index == r.index
        assert s.file == f"stages/{r.filename}"
        assert (out / s.file).is_file()
        assert s.size_mb == round(modelio.size_mb(out / s.file), 3)
        assert s.exact is True  # both passes are exact
    # what carries this CPU's float rounding stays out of the model folder
    assert "seconds" not in (out / "build.json").read_text()
    assert "max_abs_diff" not in (out / "build.json").read_text()
    checks = read_record(out.parent / "checks.json", CheckRecord)
    assert checks.target == "low" and checks.machine["cpu"]
    for r in results:
        c = checks.of(f"stages/{r.filename}")
        assert c is not None
        assert c.argmax_agreement == round(r.divergence["argmax_agreement"], 6)
        assert c.max_abs_diff == round(r.divergence["max_abs_diff"], 6)
    assert Recipe.from_resolved(rec["recipe"]).resolved() == recipe.resolved()


def test_building_twice_gives_byte_identical_model_folders(tmp_path):
    """A pass decides from its inputs, options and data only: no timings, no temp names."""
    for name in ("a", "b"):
        recipe, results = _results()
        write_build(tmp_path / name / "model", recipe, results, "low", contract=CONTRACT)
    assert _snapshot(tmp_path / "a" / "model") == _snapshot(tmp_path / "b" / "model")


def test_write_build_replaces_a_previous_build(tmp_path):
    out = tmp_path / "model"
    recipe, results = _results()
    write_build(out, recipe, results, "a", contract=CONTRACT)
    (out / "stale.txt").write_text("from an older build")
    recipe2 = _recipe(FIX)
    write_build(out, recipe2, results[:1], "b", contract=CONTRACT)
    assert not (out / "stale.txt").exists()
    assert not (out / "stages" / "02-prune_charset.onnx").exists()
    assert json.loads((out / "build.json").read_text())["target"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.json", "model", "timings.json"]


def test_failed_write_leaves_the_previous_build_intact(tmp_path, monkeypatch):
    out = tmp_path / "model"
    recipe, results = _results()
    write_build(out, recipe, results, "old", contract=CONTRACT)
    before = _snapshot(out)

    real_save, calls = modelio.save, []

    def flaky_save(model, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(model, path)

    monkeypatch.setattr(modelio, "save", flaky_save)
    _, new_results = _results(allowed="ab")
    with pytest.raises(OSError, match="disk full"):
        write_build(out, recipe, new_results, "new", contract=CONTRACT)
    assert len(calls) == 2
    assert _snapshot(out) == before
    # temp folder removed; the old timings and checks stay with the old build
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.json", "model", "timings.json"]


def test_failed_final_rename_leaves_the_previous_build_intact(tmp_path, monkeypatch):
    out = tmp_path / "model"
    recipe, results = _results()
    write_build(out, recipe, results, "old", contract=CONTRACT)
    before = _snapshot(out)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".model.tmp"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_build(out, recipe, results, "new", contract=CONTRACT)
    assert _snapshot(out) == before


def test_pruning_reports_the_steps_whose_best_class_it_removed():
    """Agreement on the kept columns cannot see a removed class the input model preferred."""
    model = tiny.tiny_ctc()
    xs = tiny.inputs(8)
    best = np.concatenate([tiny.run(model, x).argmax(-1).ravel() for x in xs])
    results = run_passes(model, _recipe(FIX, PRUNE), _context(allowed_chars="a"))
    expected = float(np.isin(best, [0, 1], invert=True).mean())  # kept: blank and 'a'
    assert expected > 0
    assert results[1].divergence["dropped_best"] == pytest.approx(expected)


def test_kept_columns_map_duplicate_dictionary_entries_in_order():
    old = modelio.CtcSpec("x", "y", ["", "a", "b", "a", "c"])
    new = modelio.CtcSpec("x", "y", ["", "a", "a", "c"])
    assert build.kept_columns(old, new) == [0, 1, 3, 4]
    assert build.kept_columns(old, old) is None


def test_measured_report_fields_go_to_checks_json_not_the_model_folder(tmp_path):
    """A pass's fields tagged `measured` (quantize_to_tolerance's sensitivities, whose last
    digits follow the build CPU's kernels) leave build.json, so equal decisions give equal
    model folders on every build machine; checks.json keeps them for the report."""
    saved = dict(registry._PASSES)

    def _tmp_measuring(model, options, context):
        """Report a decision and a measurement."""
        out = _scaled_head(model, options.factor)
        report = {"chose": "all", "sensitivity": [{"node": "head", "rel_mse": 0.0123}]}
        out.metadata_props.add(key="report._tmp_measuring", value=json.dumps(report))
        return out

    try:
        registry.register(
            "_tmp_measuring", ScaleOptions, kind="quantize", exact=False, measured=("sensitivity",)
        )(_tmp_measuring)
        results = run_passes(
            tiny.tiny_ctc(), _recipe(PassStep("_tmp_measuring", ScaleOptions())), _context()
        )
    finally:
        registry._PASSES.clear()
        registry._PASSES.update(saved)
    assert results[0].report == {"_tmp_measuring": {"chose": "all"}}
    out = tmp_path / "build" / "model"
    write_build(
        out,
        _recipe(PassStep("_tmp_measuring", ScaleOptions())),
        results,
        "tiny",
        contract=CONTRACT,
    )
    stage = read_record(out / "build.json", BuildRecord).stages[0]
    assert stage.report == {"_tmp_measuring": {"chose": "all"}}
    assert "0.0123" not in (out / "build.json").read_text()
    check = read_record(tmp_path / "build" / "checks.json", CheckRecord).stages[0]
    assert check.measured == {
        "_tmp_measuring": {"sensitivity": [{"node": "head", "rel_mse": 0.0123}]}
    }


def test_a_recipe_json_without_the_contract_names_the_file_and_field(tmp_path):
    recipe, results = _results()
    out = tmp_path / "model"
    write_build(out, recipe, results, "low", contract=CONTRACT)
    rec = json.loads((out / "recipe.json").read_text())
    del rec["contract"]["output"]["blank"]
    (out / "recipe.json").write_text(json.dumps(rec))
    with pytest.raises(RecordError) as info:
        build.read_build_contract(out)
    assert str(out / "recipe.json") in str(info.value) and "contract.output.blank" in str(
        info.value
    )
