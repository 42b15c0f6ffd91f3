"""Recipes, pipeline.yaml and params.yaml: merges, overrides, errors naming file and field."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

import stages.passes  # noqa: F401 - registers the passes recipes name
from stages import recipe as recipes
from stages import registry
from stages.errors import RecipeError
from stages.params import Params, load_params
from stages.passes.fix_output_shape import FixOutputShapeOptions
from stages.yamlio import field_path, merge

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS: dict[str, Any] = {
    "runtime": {"intra_op_threads": 1},
    "equivalence": {"rtol": 0.001, "atol": 0.001, "images": 8},
}


def _write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _recipe(tmp_path: Path, **fields: Any) -> Path:
    data = {"description": "test class", "passes": [{"fix_output_shape": {}}], **fields}
    return _write(tmp_path / "cls.yaml", data)


def _error(path: Path, **kwargs: Any) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        recipes.load_recipe(path, **kwargs)
    return info.value


def _params(**patch: Any) -> dict[str, Any]:
    base = {
        "targets": ["high", "mid", "low"],
        "charset": "lower_digits",
        "data": {"synthetic": {"clean": {"seed": 1}}},
        "versions": {},
        "overrides": {"high": {}, "mid": {}, "low": {}},
    }
    return merge(base, patch)


# ---------------------------------------------------------------------------- happy path


def test_load_recipe_merges_defaults_file_and_option_defaults(tmp_path):
    path = _recipe(
        tmp_path,
        passes=[{"fix_output_shape": {"rank": 0}}, {"prune_charset": None}],
        preprocess={"width_scale": 0.5, "grayscale": "before_resize"},
        runtime={"intra_op_threads": 4},
    )
    r = recipes.load_recipe(path, DEFAULTS)
    assert r.description == "test class"
    # the file patches the defaults field by field
    assert r.preprocess.width_scale == 0.5
    assert r.preprocess.grayscale == "before_resize"
    assert r.preprocess.interpolation == "lanczos"  # from the defaults
    assert r.runtime.intra_op_threads == 4
    assert r.runtime.allow_spinning is False  # pipeline defaults < recipe file, field by field
    # passes keep their order; omitted options take the options model's defaults
    assert [s.name for s in r.passes] == ["fix_output_shape", "prune_charset"]
    assert r.passes[0].options == FixOutputShapeOptions(rank=0)
    assert isinstance(r.passes[1].options, registry.get("prune_charset").options)
    assert r.passes[1].options == registry.get("prune_charset").options()
    # untouched sections are their models' defaults
    assert r.budgets.max_size_mb is None
    assert r.bundle.confidence_threshold == 0.5


def test_defaults_are_not_mutated(tmp_path):
    defaults = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    recipes.load_recipe(_recipe(tmp_path, preprocess={"width_scale": 0.5}), defaults)
    assert defaults == DEFAULTS


def test_merge_is_deep_and_lists_replace():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    out = merge(base, {"a": {"c": [3]}, "e": {"f": 2}})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_resolved_round_trips_through_yaml(tmp_path):
    path = _recipe(
        tmp_path,
        passes=[{"fix_output_shape": {"outputs": ["logits"], "rank": 2}}, {"prune_charset": {}}],
        preprocess={"backend": "numpy", "interpolation": "area", "normalize": "signed"},
        budgets={"max_size_mb": 3.5},
    )
    first = recipes.load_recipe(path, DEFAULTS).resolved()
    assert first["passes"][0] == {
        "fix_output_shape": {"outputs": ["logits"], "rank": 2, "infer_shapes": True}
    }
    again = _write(tmp_path / "resolved.yaml", first)
    assert recipes.load_recipe(again).resolved() == first


def test_every_configured_class_loads_with_the_real_files():
    params = load_params(ROOT / "params.yaml")
    pipeline = recipes.load_pipeline(ROOT / "pipeline.yaml")
    for target in params.targets:
        r = recipes.load_class(target, params, pipeline, ROOT / "configs")
        assert r.passes, target


# ---------------------------------------------------------------------------- recipe errors


def test_unknown_pass_lists_the_known_passes(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {}}, {"no_such_pass": {}}])
    err = _error(path)
    assert (err.file, err.field) == (str(path), "passes[1]")
    assert str(err).startswith(f"{path}: passes[1]: unknown pass 'no_such_pass'")
    for name in registry.names():
        assert name in str(err)


def test_unknown_option_names_its_path(tmp_path):
    err = _error(_recipe(tmp_path, passes=[{"fix_output_shape": {"bogus": 1}}]))
    assert err.field == "passes[0].fix_output_shape.bogus"
    assert str(err).startswith(f"{tmp_path / 'cls.yaml'}: passes[0].fix_output_shape.bogus: ")
    assert "given: 1" in str(err)


def test_unknown_option_lists_the_allowed_options(tmp_path):
    err = _error(_recipe(tmp_path, passes=[{"fix_output_shape": {"bogus": 1}}]))
    for field in FixOutputShapeOptions.model_fields:
        assert field in str(err)


def test_wrong_type_names_path_and_given_value(tmp_path):
    err = _error(_recipe(tmp_path, passes=[{"fix_output_shape": {"rank": "many"}}]))
    assert err.field == "passes[0].fix_output_shape.rank"
    assert "valid integer" in str(err) and "given: 'many'" in str(err)
    err = _error(_recipe(tmp_path, runtime={"intra_op_threads": "many"}), defaults=DEFAULTS)
    assert err.field == "runtime.intra_op_threads"
    assert "valid integer" in str(err)


def test_pass_option_out_of_range_names_the_bound(tmp_path):
    err = _error(_recipe(tmp_path, passes=[{"fix_output_shape": {"rank": 99}}]))
    assert err.field == "passes[0].fix_output_shape.rank"
    assert "less than or equal to 8" in str(err) and "given: 99" in str(err)


@pytest.mark.parametrize(
    ("section", "field", "value", "allowed"),
    [
        ("runtime", "intra_op_threads", 0, "1..256"),
        ("runtime", "intra_op_threads", 999, "1..256"),
        ("preprocess", "width_scale", 9, "0.1..4.0"),
        ("preprocess", "height", 4, "8..1024"),
    ],
)
def test_out_of_range_names_file_field_and_range(tmp_path, section, field, value, allowed):
    path = _recipe(tmp_path, **{section: {field: value}})
    err = _error(path, defaults=DEFAULTS)
    assert err.file == str(path)
    assert err.field.startswith(section)
    msg = str(err)
    assert str(path) in msg and field in msg and allowed in msg and f"got {value}" in msg


def test_out_of_range_field_path_is_the_full_path(tmp_path):
    err = _error(_recipe(tmp_path, runtime={"intra_op_threads": 0}), defaults=DEFAULTS)
    assert err.field == "runtime.intra_op_threads"


def test_bad_literal_lists_the_allowed_values(tmp_path):
    path = _recipe(tmp_path, preprocess={"interpolation": "cubic"})
    err = _error(path, defaults=DEFAULTS)
    assert (err.file, err.field) == (str(path), "preprocess.interpolation")
    msg = str(err)
    for allowed in ("lanczos", "bilinear", "area", "nearest"):
        assert allowed in msg
    assert "given: 'cubic'" in msg


def test_numpy_backend_rejects_lanczos(tmp_path):
    # the defaults say lanczos; switching only the backend is the cross-field mistake
    err = _error(_recipe(tmp_path, preprocess={"backend": "numpy"}), defaults=DEFAULTS)
    assert err.field == "preprocess.interpolation"
    assert "numpy" in str(err) and "lanczos" in str(err)
    for allowed in ("bilinear", "area", "nearest"):
        assert allowed in str(err)


def test_unknown_top_level_field(tmp_path):
    err = _error(_recipe(tmp_path, bogus=1))
    assert err.field == "bogus"


def test_missing_description(tmp_path):
    err = _error(_write(tmp_path / "r.yaml", {"passes": [{"fix_output_shape": {}}]}))
    assert err.field == "description" and "required" in str(err)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    err = _error(path)
    assert err.file == str(path)
    assert str(err) == f"{path}: file not found"


def test_yaml_syntax_error(tmp_path):
    path = _write(tmp_path / "broken.yaml", "description: x\npasses: [unclosed\n")
    err = _error(path)
    assert err.file == str(path)
    assert "YAML syntax error" in str(err)
    assert str(err).startswith(str(path))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_file_must_be_a_mapping(tmp_path, text):
    err = _error(_write(tmp_path / "r.yaml", text))
    assert "must be a mapping" in str(err)


@pytest.mark.parametrize(
    "passes", [{"fix_output_shape": {}}, [], None, "fix_output_shape"], ids=repr
)
def test_passes_must_be_a_non_empty_list(tmp_path, passes):
    path = _write(tmp_path / "r.yaml", {"description": "d", "passes": passes})
    err = _error(path)
    assert (err.file, err.field) == (str(path), "passes")
    assert "non-empty list" in str(err)


def test_pass_entry_must_have_one_key(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {}, "prune_charset": {}}])
    err = _error(path)
    assert err.field == "passes[0]" and "single-key" in str(err)


# ---------------------------------------------------------------------------- overrides


def test_override_patches_preprocess_and_a_pass_by_name(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {"rank": 3}}, {"prune_charset": {}}])
    override = {
        "preprocess": {"width_scale": 0.75},
        "passes": {"fix_output_shape": {"infer_shapes": False}},
    }
    r = recipes.load_recipe(path, DEFAULTS, override)
    assert r.preprocess.width_scale == 0.75
    assert r.preprocess.interpolation == "lanczos"
    # the option the override leaves alone keeps the recipe's value, not the model default
    assert r.passes[0].options == FixOutputShapeOptions(rank=3, infer_shapes=False)
    assert r.passes[1].options == registry.get("prune_charset").options()


def test_override_through_params_and_load_class(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    _write(configs / "low.yaml", {"description": "low", "passes": [{"fix_output_shape": {}}]})
    params = Params.model_validate(
        _params(
            overrides={
                "low": {
                    "preprocess": {"width_scale": 0.5},
                    "passes": {"fix_output_shape": {"rank": 0}},
                }
            }
        )
    )
    pipeline = recipes.Pipeline(stages=["build"], defaults=DEFAULTS)
    r = recipes.load_class("low", params, pipeline, configs)
    assert r.preprocess.width_scale == 0.5
    assert r.passes[0].options.rank == 0


def test_override_naming_a_pass_the_recipe_lacks(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    _write(configs / "high.yaml", {"description": "h", "passes": [{"fix_output_shape": {}}]})
    params = Params.model_validate(
        _params(overrides={"high": {"passes": {"prune_charset": {"chars": "abc"}}}})
    )
    with pytest.raises(RecipeError) as info:
        recipes.load_class("high", params, recipes.Pipeline(stages=[]), configs)
    err = info.value
    assert (err.file, err.field) == ("params.yaml: overrides.high", "passes.prune_charset")
    assert str(err).startswith("params.yaml: overrides.high: passes.prune_charset: ")
    assert "fix_output_shape" in str(err)  # the recipe's passes, to choose from


def test_override_with_a_bad_pass_option_names_params(tmp_path):
    path = _recipe(tmp_path)
    with pytest.raises(RecipeError) as info:
        recipes.load_recipe(
            path, {}, {"passes": {"fix_output_shape": {"rank": 99}}}, "params.yaml: overrides.x"
        )
    assert info.value.file == "params.yaml: overrides.x"
    assert info.value.field == "passes.fix_output_shape.rank"


def test_override_with_a_bad_field_names_params(tmp_path):
    path = _recipe(tmp_path)
    with pytest.raises(RecipeError) as info:
        recipes.load_recipe(
            path, DEFAULTS, {"preprocess": {"width_scale": 9}}, "params.yaml: overrides.x"
        )
    assert "params.yaml" in info.value.file


def test_load_class_unknown_class_lists_known_classes(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("high", "low"):
        _write(
            configs / f"{name}.yaml", {"description": name, "passes": [{"fix_output_shape": {}}]}
        )
    params = Params.model_validate(_params())
    with pytest.raises(RecipeError) as info:
        recipes.load_class("ultra", params, recipes.Pipeline(stages=[]), configs)
    assert info.value.file == str(configs / "ultra.yaml")
    assert "'ultra'" in str(info.value)
    assert "known classes: high, low" in str(info.value)


# ---------------------------------------------------------------------------- params / pipeline


def _params_error(tmp_path: Path, data: dict[str, Any]) -> RecipeError:
    path = _write(tmp_path / "params.yaml", data)
    with pytest.raises(RecipeError) as info:
        load_params(path)
    assert info.value.file == str(path)
    assert str(info.value).startswith(str(path))
    return info.value


def test_params_happy_path(tmp_path):
    data = _params(
        charset="chars:xyz12",
        data={"synthetic": {"clean": {"seed": 1, "style": {"alphabet": "zy1"}}}},
    )
    p = load_params(_write(tmp_path / "params.yaml", data))
    assert p.allowed_chars() == "xyz12"
    assert p.data.synthetic["clean"].style.alphabet == "zy1"
    assert p.targets == ["high", "mid", "low"]


def test_params_charset_alone_retargets_the_synthetic_alphabet(tmp_path):
    # no alphabet in the style: it follows the charset, so one edit retargets the data too
    p = load_params(_write(tmp_path / "params.yaml", _params(charset="digits")))
    assert p.data.synthetic["clean"].style.alphabet is None
    from stages.data.sources import resolved_style

    assert resolved_style(p.data.synthetic["clean"], p.allowed_chars()).alphabet == "0123456789"


def test_params_unknown_charset_preset_lists_presets(tmp_path):
    err = _params_error(tmp_path, _params(charset="klingon"))
    assert "unknown charset 'klingon'" in str(err)
    for preset in ("digits", "lower_digits", "letters_digits"):
        assert preset in str(err)


def test_params_overrides_for_classes_not_in_targets_are_ignored_with_a_note(tmp_path):
    """Narrowing targets leaves params.yaml valid: high's override (and one for a class with
    no recipe at all) is set aside, never read, and named in the notes; mid's still applies."""
    configs = tmp_path / "configs"
    configs.mkdir()
    recipe = {"description": "a class", "passes": [{"fix_output_shape": {}}]}
    for name in ("high", "mid"):
        _write(configs / f"{name}.yaml", recipe)
    data = _params(
        targets=["mid", "low"],
        overrides={
            "high": {"passes": {"no_such_pass": {}}},  # an error if it were read
            "ultra": {},
            "mid": {"preprocess": {"width_scale": 0.5}},
        },
    )
    p = load_params(_write(tmp_path / "params.yaml", data))
    assert p.ignored_overrides() == ["high", "ultra"]
    assert p.notes() == [
        "overrides.high ignored: high is not in targets [mid, low]",
        "overrides.ultra ignored: ultra is not in targets [mid, low]",
    ]
    pipeline = recipes.Pipeline(stages=["build"], defaults=DEFAULTS)
    assert recipes.load_class("mid", p, pipeline, configs).preprocess.width_scale == 0.5
    assert p.override_for("high") is None
    assert recipes.load_class("high", p, pipeline, configs).passes[0].name == "fix_output_shape"


def test_params_an_ignored_override_must_still_be_a_mapping(tmp_path):
    err = _params_error(tmp_path, _params(targets=["mid"], overrides={"high": "fast"}))
    assert err.field == "overrides.high", err.field


def test_params_with_every_override_a_target_has_no_notes(tmp_path):
    p = load_params(_write(tmp_path / "params.yaml", _params()))
    assert p.ignored_overrides() == [] and p.notes() == []
    assert p.override_for("low") == {}


def test_params_alphabet_outside_charset(tmp_path):
    data = {"synthetic": {"clean": {"seed": 1, "style": {"alphabet": "12ab"}}}}
    err = _params_error(tmp_path, _params(charset="digits", data=data))
    assert err.field == "data.synthetic.clean.style.alphabet"
    assert "'a'" in str(err) and "'b'" in str(err) and "digits" in str(err)
    assert "remove the alphabet to follow the charset" in str(err)


def test_params_missing_targets(tmp_path):
    data = _params()
    del data["targets"]
    err = _params_error(tmp_path, data)
    assert err.field == "targets"


def test_params_unknown_field(tmp_path):
    err = _params_error(tmp_path, _params(bogus=1))
    assert err.field == "bogus"


def test_check_versions_mismatch_names_the_pin_and_the_installed_version():
    installed = metadata.version("onnx")
    params = Params.model_validate(_params(versions={"onnx": "0.0.1"}))
    with pytest.raises(RecipeError) as info:
        params.check_versions("params.yaml")
    err = info.value
    assert (err.file, err.field) == ("params.yaml", "versions.onnx")
    assert "0.0.1" in str(err) and installed in str(err)


def test_check_versions_accepts_the_installed_versions():
    pins = {lib: metadata.version(lib) for lib in ("onnx", "onnxruntime")}
    Params.model_validate(_params(versions=pins)).check_versions("params.yaml")


def test_load_pipeline_errors_name_the_file(tmp_path):
    path = _write(tmp_path / "pipeline.yaml", {"defaults": {}})
    with pytest.raises(RecipeError) as info:
        recipes.load_pipeline(path)
    assert info.value.file == str(path) and info.value.field == "stages"


def test_field_path_formats_indices_and_names():
    assert field_path(("passes", 0, "x", "y")) == "passes[0].x.y"
    assert field_path(()) == ""


# ---------------------------------------------------------------------------- issue 13 / 11


@pytest.mark.parametrize("name", registry.names())
def test_every_pass_round_trips_through_the_resolved_recipe(tmp_path, name):
    """options -> recipe.json -> reload -> equal, for every registered pass (a resolved
    recipe lists every field, so validators must accept their own defaults)."""
    path = _recipe(tmp_path, passes=[{name: {}}])
    first = recipes.load_recipe(path, DEFAULTS)
    again = recipes.Recipe.from_resolved(json.loads(json.dumps(first.resolved())))
    assert again.resolved() == first.resolved()
    assert again.passes[0].options == first.passes[0].options


# one field each pass has that an override may change, with a non-default value
PATCHES = {
    "convert_opset": {"opset": 14},
    "fix_output_shape": {"rank": 0},
    "fuse_silu": {"only_after_dequantize": True},
    "lift_constants": {"min_elements": 2},
    "ort_optimize": {"level": "basic"},
    "prune_charset": {"chars": "abc"},
    "quantize_dynamic": {"per_channel": True},
    "quantize_static": {"reduce_range": True},
    "quantize_to_tolerance": {"min_agreement": 0.9},
    "simplify": {"check_n": 1},
    "to_fp16": {"keep_io_types": False},
}


def test_every_pass_has_an_override_case():
    assert sorted(PATCHES) == registry.names()


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_an_override_patches_only_the_fields_it_names(tmp_path, name):
    recipe_options = {"quantize_static": {"calibrate_method": "minmax"}}.get(name, {})
    path = _recipe(tmp_path, passes=[{name: recipe_options}])
    r = recipes.load_recipe(path, DEFAULTS, {"passes": {name: PATCHES[name]}})
    options = r.passes[0].options
    for field, value in PATCHES[name].items():
        assert getattr(options, field) == value
    untouched = registry.get(name).options.model_validate({**recipe_options, **PATCHES[name]})
    assert options == untouched
    # and the patched, resolved recipe loads back
    assert recipes.Recipe.from_resolved(r.resolved()).resolved() == r.resolved()


def test_quantize_static_override_keeps_an_unset_percentile_unset(tmp_path):
    """The old merge onto model_dump() marked every field as set, and any override of a
    quantize_static step failed with 'percentile is only used with ...'."""
    path = _recipe(tmp_path, passes=[{"quantize_static": {}}])
    r = recipes.load_recipe(path, DEFAULTS, {"passes": {"quantize_static": {"per_channel": True}}})
    assert r.passes[0].options.per_channel is True
    assert "percentile" not in r.passes[0].options.model_fields_set


def test_override_null_drops_a_pass(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {}}, {"prune_charset": {}}])
    r = recipes.load_recipe(path, DEFAULTS, {"passes": {"prune_charset": None}})
    assert [s.name for s in r.passes] == ["fix_output_shape"]


def test_override_dropping_every_pass_is_an_error(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {}}])
    err = _error(path, defaults=DEFAULTS, override={"passes": {"fix_output_shape": None}})
    assert err.field == "passes" and "empty" in str(err)


def test_override_pass_patch_must_be_a_mapping(tmp_path):
    path = _recipe(tmp_path, passes=[{"fix_output_shape": {}}])
    err = _error(path, defaults=DEFAULTS, override={"passes": {"fix_output_shape": 3}})
    assert err.field == "passes.fix_output_shape" and "mapping of options or null" in str(err)


def test_preprocessing_starts_from_the_model_contract(tmp_path):
    from ocr_bundles_runtime.preprocess import Preprocess

    contract = Preprocess(height=48, channels=3, normalize="signed", channel_order="bgr")
    path = _recipe(tmp_path, preprocess={"interpolation": "bilinear"})
    r = recipes.load_recipe(path, DEFAULTS, contract_input=contract)
    assert (r.preprocess.height, r.preprocess.channels) == (48, 3)
    assert r.preprocess.channel_order == "bgr"
    assert r.preprocess.norm.mean == (0.5,) and r.preprocess.norm.std == (0.5,)
    assert r.preprocess.interpolation == "bilinear"  # only what the recipe changes


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"synthetic": {}, "folders": {}}, "data", "no data source"),
        (
            {"synthetic": {"a": {"seed": 1}}, "folders": {"a": {"path": "x"}}},
            "data",
            "used twice",
        ),
        ({"synthetic": {"Bad Name": {"seed": 1}}}, "data", "lowercase"),
        (
            {"folders": {"mine": {"path": "x", "calib": 0.5, "val": 0.5}}},
            "data.folders.mine",
            "5 %",
        ),
        (
            {"synthetic": {"clean": {"seed": 1, "style": {"generator": "warp"}}}},
            "data.synthetic",
            "",
        ),
    ],
)
def test_params_data_errors_name_the_field(tmp_path, data, field, words):
    err = _params_error(tmp_path, {**_params(), "data": data})
    assert err.field.startswith(field), err.field
    assert words in str(err)


def test_params_baselines_a_file_source_lacks_are_skipped_with_a_note(tmp_path):
    """stock_default is ddddocr's own int8 model: with a file source it is skipped (stock is
    then the source model run plainly, so it stays), and the notes say why."""
    data = _params(
        model={"source": "file", "path": "models/input/m.onnx"},
        bench={"baselines": ["stock", "stock_default", "naive_int8"]},
    )
    p = load_params(_write(tmp_path / "params.yaml", data))
    assert p.applicable_baselines() == ["stock", "naive_int8"]
    assert p.skipped_baselines() == {
        "stock_default": "ddddocr's own int8 model applies only to model.source ddddocr"
    }
    assert p.notes() == [
        "bench.baselines stock_default skipped: ddddocr's own int8 model applies only to "
        "model.source ddddocr"
    ]
    # what the bench stage measures; params.yaml's own list is left as written
    assert p.bench_as_run().baselines == ["stock", "naive_int8"]
    assert p.bench_as_run().repeats == p.bench.repeats
    assert p.bench.baselines == ["stock", "stock_default", "naive_int8"]


def test_params_every_baseline_applies_to_the_ddddocr_source(tmp_path):
    p = load_params(_write(tmp_path / "params.yaml", _params()))
    assert p.model.source == "ddddocr"
    assert p.applicable_baselines() == ["stock", "stock_default", "naive_int8"]
    assert p.skipped_baselines() == {} and p.notes() == []


def test_params_preprocess_candidate_errors_name_the_candidate(tmp_path):
    data = _params(preprocess={"candidates": {"odd": {"interpolation": "cubic"}}})
    err = _params_error(tmp_path, data)
    assert err.field == "preprocess.candidates.odd"


def test_params_model_file_source_needs_a_path(tmp_path):
    err = _params_error(tmp_path, _params(model={"source": "file"}))
    assert err.field.startswith("model") and "path" in str(err)


def test_shipped_recipes_declare_profiles_params_defines():
    params = load_params(ROOT / "params.yaml")
    pipeline = recipes.load_pipeline(ROOT / "pipeline.yaml")
    for target in params.targets:
        r = recipes.load_class(target, params, pipeline, ROOT / "configs")
        assert r.profiles and set(r.profiles) <= set(params.profiles), target
    # low-end phones are ARM without dot product: the class is judged on that CPU
    assert "arm64" in recipes.load_class("low", params, pipeline, ROOT / "configs").profiles


def test_a_recipe_naming_an_unknown_profile_names_the_field_and_the_known_ones(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    recipe = {"description": "low", "passes": [{"fix_output_shape": {}}], "profiles": ["zx81"]}
    _write(configs / "low.yaml", recipe)
    profile = {"arch": "aarch64", "qemu_cpu": "cortex-a53", "note": "a53"}
    params = Params.model_validate(_params(profiles={"arm64": profile}))
    with pytest.raises(RecipeError) as info:
        recipes.load_class("low", params, recipes.Pipeline(stages=[]), configs)
    assert (info.value.file, info.value.field) == (str(configs / "low.yaml"), "profiles")
    assert "['zx81'] are not CPU profiles of params.yaml; known: ['arm64']" in str(info.value)
    # the same name given by an override is reported at the override
    _write(configs / "low.yaml", {**recipe, "profiles": ["arm64"]})
    params = Params.model_validate(
        _params(profiles={"arm64": profile}, overrides={"low": {"profiles": ["zx81"]}})
    )
    with pytest.raises(RecipeError) as info:
        recipes.load_class("low", params, recipes.Pipeline(stages=[]), configs)
    assert info.value.file == "params.yaml: overrides.low"


def test_a_profile_entry_with_an_unknown_field_is_refused(tmp_path):
    bad = {"arch": "aarch64", "note": "x", "qemu_model": "cortex-a53"}
    path = _write(tmp_path / "params.yaml", _params(profiles={"arm64": bad}))
    with pytest.raises(RecipeError, match=r"profiles\.arm64\.qemu_model"):
        load_params(path)
