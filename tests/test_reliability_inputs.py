"""Bad recipes and params through the CLI: exit 2, one `error:` line naming file, field and the
allowed values, nothing written, and refused before any model or data is read.

The build verb checks, in order: params.yaml, pipeline.yaml, the target, the model stage's
contract (models/source/contract.json: the recipe starts from its input contract), the recipe
with its override; only then does it load the model and the data. The projects here hold a
contract but no model file and no data, so a refusal that mentions either came too late.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from builders import write_source

from stages import cli

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ", ".join(f"{lib}: {metadata.version(lib)}" for lib in ("onnx", "onnxruntime"))
PARAMS = f"""\
targets: [mid, low]
charset: lower_digits
data:
  synthetic:
    clean: {{seed: 1, calib: 4, val: 4, eval: 4}}
versions: {{{VERSIONS}}}
overrides: {{mid: {{}}, low: {{}}}}
"""
PIPELINE = """\
stages: [model, synthetic, build]
defaults:
  preprocess: {backend: pillow, interpolation: lanczos}
  runtime: {intra_op_threads: 1}
"""
HEAD = "description: test class\npasses:\n"
RECIPE = HEAD + "  - fix_output_shape: {}\n  - quantize_dynamic: {op_types: [LSTM]}\n"
MODEL = "src"  # the model stage's folder: contract.json only, no model.onnx


@pytest.fixture(scope="module")
def contract_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real contract.json, written by the model stage's writer for the tiny model."""
    return write_source(tmp_path_factory.mktemp("source")) / "contract.json"


def write_project(root: Path, contract: Path) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / MODEL).mkdir()
    shutil.copy(contract, root / MODEL / "contract.json")
    (root / "params.yaml").write_text(PARAMS)
    (root / "pipeline.yaml").write_text(PIPELINE)
    for name in ("low", "mid"):
        (root / "configs" / f"{name}.yaml").write_text(RECIPE)
    return root


@pytest.fixture
def project(tmp_path: Path, contract_json: Path) -> Path:
    return write_project(tmp_path / "p", contract_json)


def argv(root: Path, verb: str, target: str = "low", source: str = "clean") -> list[str]:
    """The verb's command line, every input it reads besides params.yaml pointing at nothing
    (the build's model folder holds only the contract)."""
    params = ["--params", str(root / "params.yaml")]
    out = ["--out", str(root / "out")]
    model, data = ["--model", str(root / MODEL)], ["--data", str(root / "no-data")]
    build = ["--build", str(root / "no-build")]
    extra = {
        "build": [
            *["--pipeline", str(root / "pipeline.yaml"), "--configs", str(root / "configs")],
            *["--target", target, *model, *data],
        ],
        "model": [],
        "synthetic": ["--source", source],
        "folder": ["--source", source],
        "preprocess": [*model, *data],
        "evaluate": ["--target", target, *model, *data, *build],
        "baselines": [*model, *data],
        "bench": [
            *["--target", target, *model, *data, *build, "--eval", str(root / "no-eval.json")],
            *["--bundle", str(root / "no-bundle"), "--baselines", str(root / "no-baselines")],
            *["--verify", str(root / "no-verify.json")],
            *["--clients", str(root / "no-clients.json")],
        ],
        "clients": ["--target", target, *model, *data, "--bundle", str(root / "no-bundle")],
        "verify": [
            *["--target", target, *model, *data, *build, "--bundle", str(root / "no-bundle")],
            *["--reference", str(root / "no-reference.json")],
        ],
        "report": [
            *["--metrics", str(root / "no-metrics"), "--builds", str(root / "no-builds")],
            *["--plots", str(root / "no-plots")],
        ],
    }[verb]
    return [verb, *params, *extra, *out]


def run_cli(capsys: pytest.CaptureFixture[str], root: Path, verb: str, **kw: str):
    """`python -m stages <verb>` in-process; returns exit code, stderr and the project's
    listing before and after."""
    before = listing(root)
    rc = cli.main(argv(root, verb, **kw))
    err = capsys.readouterr().err
    return rc, err, before, listing(root)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_refused(rc: int, err: str, before: list[str], after: list[str], where: str, *parts):
    assert rc == 2, err
    assert [ln.startswith("error:") for ln in err.splitlines()].count(True) == 1, err
    assert err.startswith(f"error: {where}: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)
    # refused before loading the model or any data
    assert "model.onnx" not in err and "no-data" not in err, err
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
SOURCE = "clean: {seed: 1, calib: 4, val: 4, eval: 4}"
SHARES = "{path: x, calib: 0.5, val: 0.5}"
RECIPE_CASES = {
    "unknown_pass": (
        patch(LOW, HEAD + "  - fix_output_shape: {}\n  - sharpen: {}\n"),
        LOW,
        ["passes[1]", "unknown pass 'sharpen'", "known: convert_opset", "fix_output_shape"],
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
    "options_inconsistent": (
        patch(LOW, HEAD + "  - quantize_static: {percentile: 99.9}\n"),
        LOW,
        ["passes[0].quantize_static", "only used with calibrate_method: percentile"],
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
        ["preprocess.height", "must be in 8..1024, got 4"],
    ),
    "runtime_range": (
        patch(LOW, RECIPE + "runtime: {intra_op_threads: 0}\n"),
        LOW,
        ["runtime.intra_op_threads", "must be in 1..256, got 0"],
    ),
    "bundle_fallback": (
        patch(LOW, RECIPE + "bundle: {fallback: best}\n"),
        LOW,
        ["bundle.fallback", "'best' is not none, float, stage:<name> or class:<name>"],
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
        replace("params.yaml", "[mid, low]", "[mid]", "{mid: {}, low: {}}", "{mid: {}}"),
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
        ["data.synthetic.clean.eval", "valid integer", "'many'"],
    ),
    "params_out_of_range": (
        replace("params.yaml", "calib: 4", "calib: -1"),
        "params.yaml",
        ["data.synthetic.clean.calib", "greater than or equal to 0", "(given: -1)"],
    ),
    "params_no_seed": (
        replace("params.yaml", "seed: 1, ", ""),
        "params.yaml",
        ["data.synthetic.clean.seed", "Field required"],
    ),
    "params_style_option": (
        replace("params.yaml", "eval: 4", "eval: 4, style: {colour: red}"),
        "params.yaml",
        ["data.synthetic.clean.style", "colour", "Extra inputs are not permitted"],
    ),
    "params_style_generator": (
        replace("params.yaml", "eval: 4", "eval: 4, style: {generator: fancy}"),
        "params.yaml",
        ["data.synthetic.clean.style", "'clean', 'hard'", "'fancy'"],
    ),
    "params_no_source": (
        replace("params.yaml", f"synthetic:\n    {SOURCE}", "synthetic: {}"),
        "params.yaml",
        ["data", "no data source: add one under synthetic or folders"],
    ),
    "params_source_name": (
        replace("params.yaml", "clean:", "Clean:"),
        "params.yaml",
        ["data", "source names ['Clean'] must be lowercase letters"],
    ),
    "params_source_twice": (
        replace("params.yaml", "versions:", "  folders: {clean: {path: x}}\nversions:"),
        "params.yaml",
        ["data", "source names ['clean'] are used twice"],
    ),
    "params_folder_shares": (
        replace("params.yaml", "versions:", f"  folders: {{mine: {SHARES}}}\nversions:"),
        "params.yaml",
        ["data.folders.mine", "leave under 5 % of the images for evaluation"],
    ),
    "params_model_choice": (
        replace("params.yaml", "charset:", "model: {output: {layout: TCB}}\ncharset:"),
        "params.yaml",
        ["model.output.layout", "'TBC' or 'BTC'", "'TCB'"],
    ),
    "params_model_old_field": (
        replace("params.yaml", "charset:", "model: {layout: TBC}\ncharset:"),
        "params.yaml",
        ["model.layout", "Extra inputs are not permitted"],
    ),
    "params_model_file_without_path": (
        replace("params.yaml", "charset:", "model: {source: file}\ncharset:"),
        "params.yaml",
        ["model", "source 'file' needs 'path'"],
    ),
    "params_charset_file_without_path": (
        replace("params.yaml", "charset:", "model: {charset: {source: file}}\ncharset:"),
        "params.yaml",
        ["model.charset", "source 'file' needs 'path'"],
    ),
    "params_baseline": (
        replace("params.yaml", "charset:", "bench: {baselines: [stock, fast]}\ncharset:"),
        "params.yaml",
        ["bench.baselines[1]", "'stock', 'stock_default' or 'naive_int8'", "'fast'"],
    ),
    "params_version_pin": (
        replace("params.yaml", f"onnx: {metadata.version('onnx')}", "onnx: 0.0.1"),
        "params.yaml",
        ["versions.onnx", "pins 0.0.1", f"{metadata.version('onnx')} is installed"],
    ),
}
# the cases that are about params.yaml alone: every verb that reads it refuses them
PARAMS_CASES = [
    c for c, (_, where, _) in RECIPE_CASES.items() if where == "params.yaml" and "target" not in c
]


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
    "pass_patch_not_a_mapping": (
        {"passes": {"quantize_dynamic": 3}},
        ["passes.quantize_dynamic", "must be a mapping of options or null, got 3"],
    ),
    "passes_not_a_mapping": (
        {"passes": ["simplify"]},
        ["passes", "must map pass names to option patches"],
    ),
    "drops_every_pass": (
        {"passes": {"fix_output_shape": None, "quantize_dynamic": None}},
        ["passes", "dropping these passes leaves the recipe empty"],
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
    text = repr(patch_).replace("None", "null")
    replace("params.yaml", "low: {}", f"low: {text}")(root)


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
    assert rc == 2 and "allowed options: op_types, weight_type, per_channel" in err, err


def test_override_dropping_one_pass_is_accepted(project: Path, capsys):
    """`passes.<name>: null` drops the pass: the build gets as far as the model."""
    _override(project, {"passes": {"quantize_dynamic": None}})
    rc, err, _, _ = run_cli(capsys, project, "build")
    assert rc == 2 and err == f"error: {project / MODEL / 'model.onnx'}: no such model file\n"


CROSS_CASES = [
    ("charset: lower_digits", "charset: klingon", "charset", "unknown charset 'klingon'"),
    (
        "versions:",
        "  min_accuracy: 1.5\nversions:",
        "data.min_accuracy",
        "less than or equal to 1",
    ),
    (
        "eval: 4",
        "eval: 4, style: {alphabet: ABC}",
        "data.synthetic.clean.style.alphabet",
        "uses ['A', 'B', 'C'], which charset 'lower_digits' excludes",
    ),
    (
        "charset:",
        "preprocess: {candidates: {tiny: {height: 2}}}\ncharset:",
        "preprocess.candidates.tiny",
        "height must be in 8..1024, got 2",
    ),
]
CROSS_IDS = ["charset", "min_accuracy", "alphabet", "candidate"]


@pytest.mark.parametrize(("old", "new", "field", "part"), CROSS_CASES, ids=CROSS_IDS)
@pytest.mark.parametrize("verb", ["build", "synthetic", "model"])
def test_params_cross_field_errors_are_refused(project: Path, capsys, verb, old, new, field, part):
    replace("params.yaml", old, new)(project)
    rc, err, before, after = run_cli(capsys, project, verb)
    assert_refused(rc, err, before, after, f"{project / 'params.yaml'}: {field}", part)


PARAMS_VERBS = [
    "synthetic",
    "folder",
    "model",
    "preprocess",
    "evaluate",
    "baselines",
    "verify",
    "clients",
    "bench",
]


@pytest.mark.parametrize("case", PARAMS_CASES)
@pytest.mark.parametrize("verb", [*PARAMS_VERBS, "report"])
def test_every_params_verb_refuses_bad_params(project: Path, capsys, verb: str, case: str):
    edit, where, parts = RECIPE_CASES[case]
    edit(project)
    rc, err, before, after = run_cli(capsys, project, verb)
    assert_refused(rc, err, before, after, str(project / where), *parts)


@pytest.mark.parametrize(
    ("verb", "field", "known"),
    [("synthetic", "data.synthetic", "['clean']"), ("folder", "data.folders", "[]")],
)
def test_unknown_source_name_is_refused(project: Path, capsys, verb: str, field: str, known):
    rc, err, before, after = run_cli(capsys, project, verb, source="nope")
    where = f"{project / 'params.yaml'}: {field}"
    assert_refused(rc, err, before, after, where, f"has no 'nope'; it has {known}")


# ------------------------------------------------------------------ data sources


def add_folder(root: Path, **fields: str) -> None:
    entry = ", ".join(f"{k}: {v}" for k, v in {"path": str(root / "imgs"), **fields}.items())
    replace("params.yaml", "versions:", f"  folders: {{mine: {{{entry}}}}}\nversions:")(root)


def images(root: Path, names: list[str]) -> None:
    from PIL import Image

    (root / "imgs").mkdir()
    for i, name in enumerate(names):
        Image.new("L", (40, 16), 10 * i).save(root / "imgs" / name)


FOLDER_CASES = {
    "no_folder": (lambda root: None, "data.folders.mine.path", ["is not a folder"]),
    "label_outside_charset": (
        lambda root: images(root, ["ab_1.png", "aB_2.png", "x-y_3.png"]),
        "data.folders.mine",
        ["2 label(s) use characters ['-', 'B'] outside the charset", "aB_2.png", "x-y_3.png"],
    ),
    "no_label_in_name": (
        lambda root: images(root, ["ab_1.png", "_2.png"]),
        "data.folders.mine",
        ["1 file name(s) carry no label before '_' (_2.png)"],
    ),
    "bad_labels_json": (
        lambda root: [images(root, ["a.png"]), (root / "imgs" / "labels.json").write_text("[")],
        "",
        ["labels.json: unreadable labels file"],
    ),
    "nothing_readable": (
        lambda root: [images(root, []), (root / "imgs" / "ab_1.png").write_bytes(b"junk")],
        "data.folders.mine",
        ["has no readable labeled image"],
    ),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_folder_verb_refuses_bad_folders(project: Path, capsys, case: str):
    make, field, parts = FOLDER_CASES[case]
    add_folder(project)
    make(project)
    rc, err, before, after = run_cli(capsys, project, "folder", source="mine")
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert f"{field}: " in err if field else str(project / "imgs" / "labels.json") in err, err
    for part in parts:
        assert part in err, (part, err)
    assert after == before, "something was written"


def test_synthetic_verb_refuses_characters_no_font_draws(project: Path, capsys):
    replace("params.yaml", "charset: lower_digits", 'charset: "chars:ab\u4e2d"')(project)
    rc, err, before, after = run_cli(capsys, project, "synthetic")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "data.synthetic.clean.style: fonts lack glyphs for [('droid_sans_mono', '\u4e2d')" in err
    assert after == before, "something was written"


@pytest.mark.parametrize("verb", ["synthetic", "folder"])
def test_source_errors_name_the_given_params_file(project: Path, capsys, verb: str):
    add_folder(project)  # no such folder
    replace("params.yaml", "charset: lower_digits", 'charset: "chars:ab\u4e2d"')(project)
    rc, err, _, _ = run_cli(capsys, project, verb, source="mine" if verb == "folder" else "clean")
    assert rc == 2 and err.startswith(f"error: {project / 'params.yaml'}: data."), err


# ------------------------------------------------------------------ the build's order of checks


def test_build_refuses_a_missing_contract(project: Path, capsys):
    """No model stage output: the one complaint is the contract, before the recipe is read."""
    (project / MODEL / "contract.json").unlink()
    RECIPE_CASES["wrong_choice"][0](project)  # a bad recipe is not reached
    rc, err, before, after = run_cli(capsys, project, "build")
    where = str(project / MODEL / "contract.json")
    assert_refused(rc, err, before, after, where, "missing; run the model stage first")


def test_build_checks_the_target_before_the_contract(project: Path, capsys):
    (project / MODEL / "contract.json").unlink()
    rc, err, before, after = run_cli(capsys, project, "build", target="tiny")
    where = f"{project / 'params.yaml'}: targets"
    assert_refused(rc, err, before, after, where, "'tiny' is not a target")


def test_build_refuses_a_corrupt_contract(project: Path, capsys):
    (project / MODEL / "contract.json").write_text('{"input_name": "x"}')
    rc, err, before, after = run_cli(capsys, project, "build")
    where = str(project / MODEL / "contract.json")
    assert_refused(rc, err, before, after, where, "invalid", "rerun the model stage")


def test_valid_recipe_gets_as_far_as_the_model(project: Path, capsys):
    """The control: with nothing wrong, the first complaint is the missing model file."""
    rc, err, _, after = run_cli(capsys, project, "build")
    assert rc == 2 and err == f"error: {project / MODEL / 'model.onnx'}: no such model file\n"
    assert "out" not in after


@pytest.mark.parametrize("verb", ["baselines", "preprocess"])
def test_valid_params_get_as_far_as_the_data(project: Path, capsys, verb: str):
    """The control for the verbs reading data: the first complaint names the missing split."""
    rc, err, _, after = run_cli(capsys, project, verb)
    assert rc == 2 and err.startswith(f"error: {project / 'no-data' / 'clean'}"), err
    assert len(err.splitlines()) == 1 and "out" not in after


def test_missing_build_is_named_by_its_file(project: Path, capsys):
    rc, err, before, after = run_cli(capsys, project, "evaluate")
    where = str(project / "no-build" / "recipe.json")
    assert_refused(rc, err, before, after, where, "missing; run the build stage first")


@pytest.mark.parametrize("generator", ["clean", "hard"])
def test_style_error_names_the_field_as_written(project: Path, capsys, generator: str):
    style = "{colour: red}" if generator == "clean" else "{generator: hard, colour: red}"
    replace("params.yaml", "eval: 4", f"eval: 4, style: {style}")(project)
    rc, err, before, after = run_cli(capsys, project, "synthetic")
    field = f"{project / 'params.yaml'}: data.synthetic.clean.style.colour"
    assert_refused(rc, err, before, after, field, "Extra inputs are not permitted")


def test_subprocess_exit_code_and_single_line(project: Path):
    RECIPE_CASES["wrong_choice"][0](project)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages", *argv(project, "build")],
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
