"""The repository's files agree with each other: pipeline.yaml, dvc.yaml, params.yaml, pins, CI."""

from __future__ import annotations

import ast
import configparser
import inspect
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
    """(stage name, definition) with foreach/do expanded over its items (params targets)."""
    out = []
    targets = _params()["targets"]
    for name, stage in _dvc_stages().items():
        if "foreach" not in stage:
            out.append((name, stage))
            continue
        items = targets if stage["foreach"] == "${targets}" else stage["foreach"]
        body = yaml.safe_dump(stage["do"])
        for item in items:
            out.append((f"{name}@{item}", yaml.safe_load(body.replace("${item}", str(item)))))
    return out


def _verb(cmd: str) -> str:
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "stages"], f"cmd is not `python -m stages <verb>`: {cmd}"
    return words[3]


def _relative_imports(fn) -> set[str]:
    """Modules a function imports as `from .x import ...`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


# ---------------------------------------------------------------------------- stage names


def test_every_dvc_stage_is_a_pipeline_stage():
    pipeline = _yaml("pipeline.yaml")["stages"]
    dvc = list(_dvc_stages())
    not_in_dvc_yet = [s for s in pipeline if s not in dvc]
    if not_in_dvc_yet:
        print(f"pipeline.yaml stages not (yet) in dvc.yaml: {not_in_dvc_yet}")
    unknown = [s for s in dvc if s not in pipeline]
    assert not unknown, (
        f"dvc.yaml stages {unknown} are not listed in pipeline.yaml stages {pipeline}"
    )
    assert len(set(pipeline)) == len(pipeline), "pipeline.yaml lists a stage twice"


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
def test_dvc_stage_runs_a_cli_verb_and_depends_on_its_code(name, stage):
    verb = _verb(" ".join(stage["cmd"].split()))
    assert verb in cli.VERBS, f"{name}: `{verb}` is not a verb of stages/cli.py"
    deps = stage.get("deps", [])
    assert "stages/cli.py" in deps, f"{name}: deps lack stages/cli.py"
    modules = [d for d in deps if d.startswith("stages/") and d != "stages/cli.py"]
    assert modules, f"{name}: deps list no stages/ module besides cli.py"
    # the modules the verb's own function imports must be deps, or editing them reruns nothing
    fn = cli.VERBS[verb][0]
    for module in sorted(_relative_imports(fn)):
        candidates = {f"stages/{module}.py", f"stages/{module}"}
        assert candidates & set(deps), f"{name}: `{verb}` imports stages/{module} but deps lack it"


@pytest.mark.parametrize(("name", "stage"), _expanded(), ids=[n for n, _ in _expanded()])
def test_dvc_stage_sources_and_params_exist(name, stage):
    for dep in stage.get("deps", []):
        if dep.startswith(("stages/", "configs/")) or dep.endswith((".yaml", ".py")):
            assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
    params = _params()
    for key in stage.get("params", []):
        assert isinstance(key, str), f"{name}: params entry {key!r} (only params.yaml keys)"
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
