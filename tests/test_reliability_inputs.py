"""Bad recipes and params through the CLI: exit 2, one `error:` line naming file, field and the
allowed values, nothing written, and refused before any model or data is read."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from stages import cli

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ", ".join(f"{lib}: {metadata.version(lib)}" for lib in ("onnx", "onnxruntime"))
PARAMS = f"""\
targets: [mid, low]
charset: lower_digits
data: {{calib: 4, val: 4, eval: 4}}
versions: {{{VERSIONS}}}
overrides: {{low: {{}}}}
"""
PIPELINE = """\
stages: [model, data, build]
defaults:
  preprocess: {backend: pillow, interpolation: lanczos}
  runtime: {intra_op_threads: 1}
"""
HEAD = "description: test class\npasses:\n"
RECIPE = HEAD + "  - fix_output_shape: {}\n  - quantize_dynamic: {op_types: [LSTM]}\n"


def write_project(root: Path) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "params.yaml").write_text(PARAMS)
    (root / "pipeline.yaml").write_text(PIPELINE)
    for name in ("low", "mid"):
        (root / "configs" / f"{name}.yaml").write_text(RECIPE)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p")


def run_cli(capsys: pytest.CaptureFixture[str], root: Path, verb: str, target: str = "low"):
    """`python -m stages <verb>` in-process with model and data pointing at nothing."""
    argv = [verb, "--params", str(root / "params.yaml"), "--pipeline", str(root / "pipeline.yaml")]
    argv += ["--configs", str(root / "configs"), "--out", str(root / "out")]
    if verb == "build":
        argv += ["--target", target, "--model", str(root / "no-model")]
        argv += ["--data", str(root / "no-data")]
    before = sorted(p.name for p in root.iterdir())
    rc = cli.main(argv)
    err = capsys.readouterr().err
    after = sorted(p.name for p in root.iterdir())
    return rc, err, before, after


def assert_refused(rc: int, err: str, before: list[str], after: list[str], where: str, *parts):
    assert rc == 2, err
    assert [ln.startswith("error:") for ln in err.splitlines()].count(True) == 1, err
    assert err.startswith(f"error: {where}: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)
    assert "no-model" not in err and "no-data" not in err  # refused before loading anything
    assert after == before, "something was written next to the inputs"


def patch(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


def replace(name: str, old: str, new: str, *more: str) -> Callable[[Path], None]:
    """Replace `old` by `new` (and each further old, new pair) in the project's file `name`."""

    def edit(root: Path) -> None:
        text = (root / name).read_text()
        pairs = (old, new, *more)
        for a, b in zip(pairs[::2], pairs[1::2], strict=True):
            assert a in text
            text = text.replace(a, b)
        (root / name).write_text(text)

    return edit


LOW = "configs/low.yaml"
RECIPE_CASES = {
    "unknown_pass": (
        patch(LOW, HEAD + "  - fix_output_shape: {}\n  - sharpen: {}\n"),
        LOW,
        ["passes[1]", "unknown pass 'sharpen'", "known: fix_output_shape", "quantize_dynamic"],
    ),
    "unknown_option": (
        patch(LOW, HEAD + "  - quantize_dynamic: {per_chanel: true}\n"),
        LOW,
        ["passes[0].quantize_dynamic.per_chanel", "allowed options: op_types, weight_type"],
    ),
    "wrong_type": (
        patch(LOW, HEAD + "  - quantize_dynamic: {per_channel: maybe}\n"),
        LOW,
        ["passes[0].quantize_dynamic.per_channel", "valid boolean", "'maybe'"],
    ),
    "wrong_choice": (
        patch(LOW, HEAD + "  - quantize_dynamic: {op_types: [LSTM, Foo]}\n"),
        LOW,
        ["passes[0].quantize_dynamic.op_types[1]", "'MatMul', 'Gemm', 'LSTM'", "'Foo'"],
    ),
    "option_out_of_range": (
        patch(LOW, HEAD + "  - quantize_static: {calibrate_method: percentile, percentile: 50}\n"),
        LOW,
        ["passes[0].quantize_static.percentile", "greater than 90", "(given: 50)"],
    ),
    "field_out_of_range": (
        patch(LOW, RECIPE + "equivalence: {images: 0}\n"),
        LOW,
        ["equivalence.images", "greater than or equal to 1", "(given: 0)"],
    ),
    "preprocess_choice": (
        patch(LOW, RECIPE + "preprocess: {backend: gpu}\n"),
        LOW,
        ["preprocess.backend", "'pillow', 'opencv' or 'numpy'", "'gpu'"],
    ),
    "preprocess_range": (
        patch(LOW, RECIPE + "preprocess: {height: 4}\n"),
        LOW,
        ["preprocess", "height must be in 8..1024, got 4"],
    ),
    "runtime_range": (
        patch(LOW, RECIPE + "runtime: {intra_op_threads: 0}\n"),
        LOW,
        ["runtime", "intra_op_threads must be in 1..256, got 0"],
    ),
    "unknown_recipe_field": (
        patch(LOW, RECIPE + "budget: {max_size_mb: 5}\n"),
        LOW,
        ["budget", "Extra inputs are not permitted"],
    ),
    "pass_not_a_mapping": (
        patch(LOW, HEAD + "  - simplify\n"),
        LOW,
        ["passes[0]", "single-key mapping {pass_name: {options}}", "'simplify'"],
    ),
    "no_passes": (
        patch(LOW, "description: x\npasses: []\n"),
        LOW,
        ["passes", "non-empty list"],
    ),
    "recipe_yaml_syntax": (
        patch(LOW, HEAD + "  - simplify: {\n"),
        LOW,
        ["YAML syntax error", "line "],
    ),
    "recipe_not_a_mapping": (patch(LOW, "- simplify\n"), LOW, ["must be a mapping, got list"]),
    "target_not_in_params": (
        replace("params.yaml", "[mid, low]", "[mid]", "{low: {}}", "{}"),
        "params.yaml",
        ["targets", "'low' is not a target", "targets: ['mid']"],
    ),
    "no_config_file": (
        lambda root: (root / LOW).unlink(),
        LOW,
        ["no recipe for device class 'low'", "known classes: mid"],
    ),
    "no_configs_folder": (
        lambda root: [p.unlink() for p in (root / "configs").iterdir()],
        LOW,
        ["no recipe for device class 'low'"],
    ),
    "missing_params": (lambda root: (root / "params.yaml").unlink(), "params.yaml", ["not found"]),
    "missing_pipeline": (
        lambda root: (root / "pipeline.yaml").unlink(),
        "pipeline.yaml",
        ["file not found"],
    ),
    "params_yaml_syntax": (
        patch("params.yaml", "targets: [mid, low\nversions: {}\n"),
        "params.yaml",
        ["YAML syntax error", "line "],
    ),
    "pipeline_yaml_syntax": (
        patch("pipeline.yaml", "stages: [model\n"),
        "pipeline.yaml",
        ["YAML syntax error"],
    ),
    "params_empty": (patch("params.yaml", ""), "params.yaml", ["must be a mapping"]),
    "params_unknown_field": (
        replace("params.yaml", "charset:", "charsets: x\ncharset:"),
        "params.yaml",
        ["charsets", "Extra inputs are not permitted"],
    ),
    "params_wrong_type": (
        replace("params.yaml", "eval: 4", "eval: many"),
        "params.yaml",
        ["data.eval", "valid integer", "'many'"],
    ),
    "params_out_of_range": (
        replace("params.yaml", "calib: 4", "calib: 0"),
        "params.yaml",
        ["data.calib", "greater than or equal to 1", "(given: 0)"],
    ),
    "params_style_option": (
        replace("params.yaml", "eval: 4", "eval: 4, style: {colour: red}"),
        "params.yaml",
        ["data.style.colour", "Extra inputs are not permitted"],
    ),
    "params_model_choice": (
        replace("params.yaml", "charset:", "model: {layout: TCB}\ncharset:"),
        "params.yaml",
        ["model.layout", "'TBC' or 'BTC'", "'TCB'"],
    ),
    "params_version_pin": (
        replace("params.yaml", f"onnx: {metadata.version('onnx')}", "onnx: 0.0.1"),
        "params.yaml",
        ["versions.onnx", "pins 0.0.1", f"{metadata.version('onnx')} is installed"],
    ),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_build_refuses_bad_recipe_or_params(project: Path, capsys, case: str):
    edit, where, parts = RECIPE_CASES[case]
    edit(project)
    rc, err, before, after = run_cli(capsys, project, "build")
    assert_refused(rc, err, before, after, str(project / where), *parts)


OVERRIDE_CASES = {
    "unknown_pass": (
        {"passes": {"nope": {}}},
        ["passes.nope", "no such pass; its passes: fix_output_shape, quantize_dynamic"],
    ),
    "wrong_choice": (
        {"passes": {"quantize_dynamic": {"weight_type": "int4"}}},
        ["passes.quantize_dynamic.weight_type", "'int8' or 'uint8'", "'int4'"],
    ),
    "wrong_type": (
        {"passes": {"quantize_dynamic": {"per_channel": [1]}}},
        ["passes.quantize_dynamic.per_channel", "valid boolean"],
    ),
    "out_of_range": (
        {"equivalence": {"atol": -1}},
        ["equivalence.atol", "greater than or equal to 0", "(given: -1)"],
    ),
    "recipe_field": (
        {"preprocess": {"backend": "gpu"}},
        ["preprocess.backend", "'pillow', 'opencv' or 'numpy'", "'gpu'"],
    ),
}


def _override(root: Path, patch_: dict) -> None:
    replace("params.yaml", "low: {}", f"low: {patch_}")(root)


@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_build_refuses_bad_override(project: Path, capsys, case: str):
    patch_, parts = OVERRIDE_CASES[case]
    _override(project, patch_)
    rc, err, before, after = run_cli(capsys, project, "build")
    assert_refused(rc, err, before, after, f"{project / 'params.yaml'}: overrides.low", *parts)


def test_override_error_names_the_given_params_file(project: Path, capsys):
    _override(project, {"passes": {"nope": {}}})
    rc, err, _, _ = run_cli(capsys, project, "build")
    assert rc == 2 and err.startswith(f"error: {project / 'params.yaml'}: overrides.low"), err


def test_override_unknown_option_lists_allowed_options(project: Path, capsys):
    _override(project, {"passes": {"quantize_dynamic": {"per_chanel": True}}})
    rc, err, _, _ = run_cli(capsys, project, "build")
    assert rc == 2 and "allowed options: op_types, weight_type" in err, err


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("charset: lower_digits", "charset: klingon", "charset"),
        ("overrides: {low: {}}", "overrides: {tiny: {}}", "overrides"),
        ("eval: 4", "eval: 4, style: {alphabet: ABC}", "data.style.alphabet"),
    ],
    ids=["charset", "override_class", "alphabet"],
)
def test_params_cross_field_errors_name_the_field(project: Path, capsys, old, new, field):
    replace("params.yaml", old, new)(project)
    rc, err, _, _ = run_cli(capsys, project, "build")
    assert rc == 2 and err.startswith(f"error: {project / 'params.yaml'}: {field}: "), err


@pytest.mark.parametrize(
    ("old", "new", "part"),
    [
        ("charset: lower_digits", "charset: klingon", "unknown charset 'klingon'; use a preset"),
        ("overrides: {low: {}}", "overrides: {tiny: {}}", "overrides: classes ['tiny']"),
        ("eval: 4", "eval: 4, style: {alphabet: ABC}", "data.style.alphabet: uses ['A', 'B', 'C']"),
    ],
    ids=["charset", "override_class", "alphabet"],
)
@pytest.mark.parametrize("verb", ["build", "data"])
def test_params_cross_field_errors_are_refused(project: Path, capsys, verb, old, new, part):
    replace("params.yaml", old, new)(project)
    rc, err, before, after = run_cli(capsys, project, verb)
    assert_refused(rc, err, before, after, str(project / "params.yaml"), part)


@pytest.mark.parametrize(
    "case", ["params_yaml_syntax", "params_wrong_type", "params_style_option", "missing_params"]
)
def test_data_refuses_bad_params(project: Path, capsys, case: str):
    edit, where, parts = RECIPE_CASES[case]
    edit(project)
    rc, err, before, after = run_cli(capsys, project, "data")
    assert_refused(rc, err, before, after, str(project / where), *parts)


def test_valid_recipe_gets_as_far_as_the_model(project: Path, capsys):
    """The control: with nothing wrong, the first complaint is the missing model file."""
    rc, err, _, after = run_cli(capsys, project, "build")
    assert rc == 2 and err == f"error: {project / 'no-model' / 'model.onnx'}: no such model file\n"
    assert "out" not in after


def test_subprocess_exit_code_and_single_line(project: Path):
    RECIPE_CASES["wrong_choice"][0](project)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    args = ["--params", project / "params.yaml", "--pipeline", project / "pipeline.yaml"]
    args += ["--configs", project / "configs", "--model", project / "no-model"]
    args += ["--data", project / "no-data", "--out", project / "out"]
    proc = subprocess.run(
        [sys.executable, "-m", "stages", "build", "--target", "low", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: {project / LOW}: passes[0].quantize_dynamic.op_types[1]: Input should be "
        "'MatMul', 'Gemm', 'LSTM', 'GRU', 'Attention' or 'Conv' (given: 'Foo')"
    ]
    assert not (project / "out").exists()
