"""The repository's files agree with each other: pipeline.yaml, dvc.yaml, params.yaml, pins, CI."""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import re
import shlex
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import cli

ROOT = Path(__file__).resolve().parents[1]
PINNED = ("onnx", "onnxruntime", "onnxsim")


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _params() -> dict[str, Any]:
    return _yaml("params.yaml")


def _dvc_stages() -> dict[str, Any]:
    return _yaml("dvc.yaml")["stages"]


def _expanded() -> list[tuple[str, dict[str, Any]]]:
    """(stage name, definition) with foreach/do expanded as DVC does: over params targets (a
    list: ${item}) or a dict of params (${key} and ${item.<field>})."""
    out = []
    params = _params()
    for name, stage in _dvc_stages().items():
        if "foreach" not in stage:
            out.append((name, stage))
            continue
        ref = stage["foreach"].strip("${}")
        items: Any = params
        for part in ref.split("."):
            items = items[part]
        body = yaml.safe_dump(stage["do"])
        pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
        for key, item in pairs:
            text = body.replace("${key}", str(key))
            if isinstance(item, dict):
                for field, value in item.items():
                    text = text.replace(f"${{item.{field}}}", str(value))
            else:
                text = text.replace("${item}", str(item))
            out.append((f"{name}@{key}", yaml.safe_load(text)))
    return out


def _verb(cmd: str) -> str:
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "stages"], f"cmd is not `python -m stages <verb>`: {cmd}"
    return words[3]


# the pipeline's packages and the folder each lives in (the runtime is its own distribution)
PACKAGES = {"stages": ROOT, "ocr_bundles_runtime": ROOT / "runtime"}


def _module_file(module: str) -> Path | None:
    base = PACKAGES.get(module.split(".")[0])
    if base is None:
        return None
    rel = Path(*module.split("."))
    for cand in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Modules of this package imported anywhere in `tree` (function bodies included)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [f"{name}.{a.name}" for a in node.names]
            out |= {n for n in [name, *names] if _module_file(n)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if _module_file(a.name)}
    return out


def _closure(start: set[str]) -> set[str]:
    """Every module reachable through imports, parents of each module included."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        text = path.read_text()
        todo += _imports(ast.parse(text), module, path.name == "__init__.py")
        todo += _discovered(path, module, text)
    return seen


def _discovered(path: Path, module: str, text: str) -> list[str]:
    """Submodules a package imports by scanning its own folder (stages/passes does, so that
    adding a pass is one file); names starting with "_" are helpers it skips."""
    if path.name != "__init__.py" or "pkgutil.iter_modules(__path__)" not in text:
        return []
    return [f"{module}.{p.stem}" for p in path.parent.glob("*.py") if not p.stem.startswith("_")]


# child processes (`python -m <module>`), counted through the module that starts them
CHILDREN = {
    "stages.measure.spawn": "stages.measure.worker",
    "stages.measure.preprocess": "stages.measure.preprocess_probe",
}


def verb_code(verb: str) -> set[str]:
    """Files a verb runs: cli.py's module-level imports, the verb function's imports, and
    everything those import in turn, child processes (CHILDREN) included."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cli.VERBS[verb][0])))
    top = ast.parse((ROOT / "stages" / "cli.py").read_text())
    imports = ast.Module(
        body=[n for n in top.body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[]
    )
    start = _imports(tree, "stages.cli", False) | _imports(imports, "stages.cli", False)
    modules = _closure(start) | {"stages.cli"}
    modules |= _closure({child for parent, child in CHILDREN.items() if parent in modules})
    return {str(_module_file(m).relative_to(ROOT)) for m in modules}


# ---------------------------------------------------------------------------- stage names


def test_pipeline_stage_list_is_dvc_yamls():
    pipeline = _yaml("pipeline.yaml")["stages"]
    dvc = list(_dvc_stages())
    assert pipeline == dvc, f"pipeline.yaml stages {pipeline} != dvc.yaml stages {dvc}"


# ---------------------------------------------------------------------------- versions


def test_pyproject_pins_equal_params_versions():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    versions = {k.lower(): str(v) for k, v in _params()["versions"].items()}
    for lib in PINNED:
        assert lib in versions, f"params.yaml versions lacks {lib}"
        assert lib in pins, f"pyproject.toml does not pin {lib} with =="
        assert pins[lib] == versions[lib], (
            f"{lib}: pyproject.toml pins {pins[lib]}, params.yaml versions says {versions[lib]}"
        )
    for lib, version in versions.items():
        assert pins.get(lib) == version, f"params.yaml versions.{lib} is not pyproject's pin"


# ---------------------------------------------------------------------------- dvc


def test_dvc_analytics_is_off():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config.has_section("core"), ".dvc/config has no [core] section"
    assert config["core"].get("analytics", "").strip().lower() == "false"


@pytest.mark.parametrize(("name", "stage"), _expanded(), ids=[n for n, _ in _expanded()])
def test_dvc_stage_runs_a_cli_verb_and_depends_on_all_its_code(name, stage):
    verb = _verb(" ".join(stage["cmd"].split()))
    assert verb in cli.VERBS, f"{name}: `{verb}` is not a verb of stages/cli.py"
    deps = [str(d) for d in stage.get("deps", [])]
    covered = lambda f: any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    missing = sorted(f for f in verb_code(verb) if f != "stages/__init__.py" and not covered(f))
    assert not missing, f"{name}: `{verb}` runs {missing} but dvc.yaml deps lack them"


def test_verb_code_follows_function_level_imports():
    files = verb_code("bench")
    assert "stages/measure/worker.py" in files  # a child process the bench starts
    assert "stages/measure/preprocess_probe.py" in verb_code("preprocess")  # and preprocess
    assert "stages/passes/quantize_static.py" in files  # reading a recipe registers passes
    assert "stages/report/plots.py" not in files


@pytest.mark.parametrize(("name", "stage"), _expanded(), ids=[n for n, _ in _expanded()])
def test_dvc_stage_sources_and_params_exist(name, stage):
    for dep in stage.get("deps", []):
        if dep.startswith(("stages/", "configs/")) or dep.endswith((".yaml", ".py")):
            assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
    params = _params()
    for key in stage.get("params", []):
        if isinstance(key, dict):  # another params file: machine.json's `numerics` only
            assert key == {"machine.json": ["numerics"]}, f"{name}: params entry {key!r}"
            assert "numerics" in json.loads((ROOT / "machine.json").read_text())
            continue
        node: Any = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
            node = node[part]


# ---------------------------------------------------------------------------- README / CI


def _ci_commands() -> list[str]:
    commands = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("set ", "cd ")):
            continue
        commands.append(line)
    return commands


def test_readme_mentions_the_ci_commands():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md does not exist yet")
    commands = _ci_commands()
    assert commands, ".ci/run runs no command"
    text = readme.read_text()
    for command in commands:
        assert command in text, f"README.md does not mention `{command}` (run by .ci/run)"
