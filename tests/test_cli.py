"""`python -m stages`: the pass listing and exit code 2 with a message for bad input."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages import registry

ROOT = Path(__file__).resolve().parents[1]


def stages_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "stages", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _registered_by_package() -> list[str]:
    code = "import json, stages.passes, stages.registry as r; print(json.dumps(r.names()))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_passes_lists_every_registered_pass_with_its_options():
    proc = stages_cli("passes")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = _registered_by_package()
    assert names
    headers = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    assert headers == names
    for name in names:
        importlib.import_module(f"stages.passes.{name}")
        spec = registry.get(name)
        tag = "exact" if spec.exact else "lossy"
        start = lines.index(f"{name}  [{spec.kind}, {tag}]  {spec.doc}")
        fields = spec.options.model_fields
        block = lines[start + 1 : start + 1 + len(fields)]
        for line, (field, info) in zip(block, fields.items(), strict=True):
            default = info.get_default(call_default_factory=True)
            assert line == f"    {field} = {default!r}: {info.description}"


BUILD = ("--model", "models/source", "--data", "data")


def test_build_with_an_unknown_target_exits_2_naming_params_and_targets(tmp_path):
    proc = stages_cli("build", "--target", "nope", *BUILD, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: params.yaml: targets: ")
    assert "'nope'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("verb", "params", "expected"),
    [
        ("build", "targets: [high\nversions: {}\n", "YAML syntax error"),
        ("synthetic", "targets: [high\nversions: {}\n", "YAML syntax error"),
        (
            "build",
            "targets: [high]\nversions: {}\ndata: {synthetic: {c: {seed: 1}}}\nbogus: 1\n",
            "params.yaml: bogus: ",
        ),
        ("synthetic", "targets: [high]\nversions: {}\n", "params.yaml: data: Field required"),
    ],
    ids=["build-syntax", "synthetic-syntax", "build-unknown-field", "synthetic-no-data"],
)
def test_broken_params_exits_2_naming_the_file(tmp_path, verb, params, expected):
    (tmp_path / "params.yaml").write_text(params)
    args = ["--target", "high", *BUILD] if verb == "build" else ["--source", "clean"]
    proc = stages_cli(verb, *args, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: params.yaml")
    assert expected in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_params_file_exits_2(tmp_path):
    args = ("--source", "clean", "--out", "out", "--params", "absent.yaml")
    proc = stages_cli("synthetic", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: absent.yaml: file not found"


def test_unknown_verb_is_a_usage_error():
    proc = stages_cli("no-such-verb")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_a_source_params_lacks_is_named_with_the_ones_it_has(tmp_path):
    proc = stages_cli("synthetic", "--source", "nope", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "data.synthetic: has no 'nope'; it has ['clean', 'hard', 'unseen']" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_build_before_the_model_stage_says_which_stage_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    args = ("--target", "low", "--model", "nowhere", "--data", "data", "--out", "out")
    recipes = ("--configs", str(ROOT / "configs"), "--pipeline", str(ROOT / "pipeline.yaml"))
    proc = stages_cli("build", *args, *recipes, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "contract.json: missing; run the model stage first" in proc.stderr


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("recognize", ("--bundle", "b", "x.png")),
        ("sign", ("--bundle", "b", "--key", "k.pem")),
        ("serve", ("--bundle", "b")),
    ],
)
def test_runtime_verbs_take_no_pipeline_settings(verb, args):
    """They read a bundle only: --params/--pipeline/--configs would be accepted and ignored."""
    proc = stages_cli(verb, *args, "--params", "params.yaml")
    assert proc.returncode == 2 and "unrecognized arguments: --params" in proc.stderr
