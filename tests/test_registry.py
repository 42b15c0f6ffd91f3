"""The pass registry: lookups, registration rules, and that every pass module is wired in."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import stages.passes
from ocr_bundles_runtime.preprocess import Preprocess
from stages import modelio, registry
from stages.build import comparable
from stages.errors import PassError, UnknownNameError
from stages.recipe import Equivalence

PASSES_DIR = Path(stages.passes.__file__).parent
ROOT = PASSES_DIR.parents[1]
# every pass module on disk, imported here so a module not yet wired into the package is still
# checked (its missing import is reported by test_every_pass_module_is_imported_by_the_package)
PASS_MODULES = sorted(p.stem for p in PASSES_DIR.glob("*.py") if not p.stem.startswith("_"))
for _module in PASS_MODULES:
    importlib.import_module(f"stages.passes.{_module}")

# Passes that cannot run on tests/tiny.py's model with default options, with the reason. Each
# listed pass must raise PassError there (a crash or a silent success both fail the smoke test).
CANNOT_RUN_ON_TINY: dict[str, str] = {
    # its default tolerance (agreement >= 0.98) is unreachable on the smoke validation labels
    # ('ab' for random inputs): it must refuse with PassError, never return an unchecked model
    "quantize_to_tolerance": "default tolerance unreachable on random tiny inputs",
}


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    factor: float = Field(1.0, description="unused")


@pytest.fixture
def fresh_registry():
    """Let a test register passes; restore the registry exactly afterwards."""
    saved = dict(registry._PASSES)
    yield registry
    registry._PASSES.clear()
    registry._PASSES.update(saved)


# ---------------------------------------------------------------------------- lookups


def test_unknown_name_lists_every_known_pass():
    with pytest.raises(UnknownNameError) as info:
        registry.get("no_such_pass")
    err = info.value
    assert isinstance(err, KeyError)  # callers may catch it as a lookup failure
    assert err.name == "no_such_pass"
    assert err.known == registry.names()
    msg = str(err)
    assert msg.startswith("unknown pass 'no_such_pass'; known: ")
    for name in registry.names():
        assert name in msg
    assert not msg.startswith('"')  # KeyError's quoting is undone


def test_names_are_sorted_and_get_returns_the_spec():
    names = registry.names()
    assert names == sorted(names)
    assert names, "no pass registered after importing stages.passes"
    for name in names:
        assert registry.get(name).name == name


def test_a_new_pass_file_is_found_without_editing_a_list(tmp_path):
    """Adding a pass is one file: a module dropped into stages/passes registers on import."""
    assert registry.names() == stages.passes.PASS_MODULES  # one module per pass, same name
    code = (
        "import sys, pathlib, shutil\n"
        f"pkg = pathlib.Path({str(tmp_path)!r}) / 'stages'\n"
        f"shutil.copytree({str(Path(stages.passes.__file__).parents[1])!r}, pkg,\n"
        "                ignore=shutil.ignore_patterns('__pycache__'))\n"
        "(pkg / 'passes' / 'noop_pass.py').write_text(\n"
        "    'from pydantic import BaseModel\\n'\n"
        "    'from ..registry import register\\n'\n"
        "    'class NoopOptions(BaseModel):\\n    pass\\n'\n"
        '    \'@register("noop_pass", NoopOptions, kind="cleanup", exact=True)\\n\'\n'
        "    'def noop_pass(model, options, context):\\n    return model\\n')\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import stages.passes\n"
        "from stages import registry\n"
        "print(registry.get('noop_pass').name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "noop_pass"


# ---------------------------------------------------------------------------- registration


def test_register_adds_a_spec_with_its_tags(fresh_registry):
    def _tmp_registry_pass(model, options, context):
        """First line of the doc.

        More text."""
        return model

    returned = registry.register("_tmp_registry_pass", _Opts, kind="fuse", exact=False)(
        _tmp_registry_pass
    )
    assert returned is _tmp_registry_pass
    spec = registry.get("_tmp_registry_pass")
    assert (spec.fn, spec.options, spec.kind, spec.exact) == (
        _tmp_registry_pass,
        _Opts,
        "fuse",
        False,
    )
    assert spec.doc == "First line of the doc."
    assert "_tmp_registry_pass" in registry.names()


def test_double_registration_is_rejected(fresh_registry):
    def _tmp_twice(model, options, context):
        return model

    registry.register("_tmp_twice", _Opts, kind="cleanup", exact=True)(_tmp_twice)
    first = registry.get("_tmp_twice")
    with pytest.raises(ValueError, match="'_tmp_twice' registered twice"):
        registry.register("_tmp_twice", _Opts, kind="cleanup", exact=False)(_tmp_twice)
    assert registry.get("_tmp_twice") is first  # the first registration survives


def test_function_named_unlike_its_key_is_rejected(fresh_registry):
    def some_other_name(model, options, context):
        return model

    with pytest.raises(ValueError, match="'some_other_name' must be named like its key '_tmp_k'"):
        registry.register("_tmp_k", _Opts, kind="cleanup", exact=True)(some_other_name)
    assert "_tmp_k" not in registry.names()


def test_no_temporary_pass_leaked_into_the_registry():
    # runs after the tests above (and tests/test_build.py): their fixtures must clean up
    assert not [n for n in registry.names() if n.startswith("_tmp")]


# ---------------------------------------------------------------------------- the pass package


@pytest.fixture(scope="module")
def registered_by_package() -> dict[str, str]:
    """name -> defining module of every pass `import stages.passes` registers, in a fresh
    interpreter (this process's registry also holds whatever the tests imported directly)."""
    code = (
        "import json, stages.passes, stages.registry as r; "
        "print(json.dumps({n: r.get(n).fn.__module__ for n in r.names()}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", PASS_MODULES)
def test_module_registers_exactly_one_pass_named_like_it(module, registered_by_package):
    assert module in registered_by_package, (
        f"importing stages.passes does not register '{module}' (stages/passes/{module}.py)"
    )
    from_module = [n for n, m in registered_by_package.items() if m == f"stages.passes.{module}"]
    assert from_module == [module], (
        f"stages/passes/{module}.py registers {from_module}; a pass module registers exactly "
        "its own pass"
    )
    spec = registry.get(module)
    assert spec.name == module
    assert spec.fn.__name__ == module
    assert spec.fn.__module__ == f"stages.passes.{module}"


def test_the_package_registers_nothing_but_its_modules(registered_by_package):
    assert sorted(registered_by_package) == PASS_MODULES


def test_every_registered_pass_comes_from_its_own_module():
    for name in registry.names():
        assert name in PASS_MODULES, f"pass '{name}' is not defined in stages/passes/{name}.py"


@pytest.mark.parametrize("name", registry.names())
def test_spec_tags_and_doc(name):
    spec = registry.get(name)
    assert spec.kind in typing.get_args(registry.Kind)
    assert isinstance(spec.exact, bool)
    assert spec.doc, f"pass '{name}' has no docstring (`python -m stages passes` shows its line)"


@pytest.mark.parametrize("name", registry.names())
def test_options_forbid_extra_fields_and_describe_every_field(name):
    options = registry.get(name).options
    assert issubclass(options, BaseModel)
    assert options.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        options.model_validate({"__surely_not_an_option__": 1})
    assert options.model_fields, f"pass '{name}' has an options model without fields"
    undocumented = [f for f, info in options.model_fields.items() if not info.description]
    assert not undocumented, f"pass '{name}': fields without description: {undocumented}"
    options()  # every option has a default, so `- name: {}` is a valid recipe entry


# ---------------------------------------------------------------------------- smoke


def _smoke_context() -> registry.PassContext:
    return registry.PassContext(
        calibration=tiny.inputs(8),
        validation={
            "clean": [(x, "ab") for x in tiny.inputs(8, seed=2)],
            "hard": [(x, "ba") for x in tiny.inputs(4, seed=4)],
        },
        allowed_chars="abc",
        input=Preprocess(height=tiny.HEIGHT),
    )


@pytest.mark.parametrize("name", registry.names())
def test_every_pass_runs_with_defaults_on_the_tiny_model(name):
    spec = registry.get(name)
    model = tiny.tiny_ctc(wrong_output_shape=False)
    before = model.SerializeToString()
    if name in CANNOT_RUN_ON_TINY:
        with pytest.raises(PassError) as info:
            spec.fn(model, spec.options(), _smoke_context())
        assert info.value.pass_name == name
        assert model.SerializeToString() == before
        pytest.skip(f"{name}: {CANNOT_RUN_ON_TINY[name]} (PassError: {info.value})")
    out = spec.fn(model, spec.options(), _smoke_context())
    assert isinstance(out, onnx.ModelProto)
    assert out is not model
    assert model.SerializeToString() == before, f"pass '{name}' mutated its input model"
    onnx.checker.check_model(modelio.checkable(out))
    ctc = modelio.spec(out)  # the ocr.* contract survives every pass
    assert ctc.layout == "TBC"
    assert set(ctc.charset) <= set(modelio.spec(model).charset)
    eq = Equivalence()
    xs = tiny.inputs(3, seed=5)
    refs = [tiny.run(model, x) for x in xs]
    for x, ref, kept in zip(xs, refs, comparable(model, out, refs), strict=True):
        got = tiny.run(out, x)
        assert got.shape == (ref.shape[0], 1, len(ctc.charset))
        assert np.isfinite(got).all()
        if spec.exact:  # on the classes both models share, as the build checks it
            np.testing.assert_allclose(got, kept, rtol=eq.rtol, atol=eq.atol)
