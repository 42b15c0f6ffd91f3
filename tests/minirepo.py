"""A throwaway git + DVC copy of this pipeline, fed the tiny CTC model from `tests/tiny.py`.

`make_repo(dest)` copies the pipeline code and dvc.yaml, writes tiny-friendly recipes and params (a
`file` source under models/input with an 8-pixel-high contract, two small synthetic sources, a
folder source, tiny bench settings) and commits it all, so that a full `dvc repro` takes well under
a minute instead of the real build's. `dvc(...)` runs the venv's DVC
with the venv first in PATH (the stage commands call `python`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import yaml

from stages.profiles.host import host_arch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: python, dvc
COPIED = (
    "stages",
    "runtime/ocr_bundles_runtime",
    "dvc.yaml",
    "pipeline.yaml",
    "pyproject.toml",
    ".dvcignore",
    ".gitignore",
    "machine.json",
    "clients/js",  # without node_modules: linked to this checkout's (make js)
)
EMULATORS = ROOT / ".emu"
TARGETS = ("high", "mid", "low")
README = "# tiny\n\n<!-- summary:start -->\n<!-- summary:end -->\n"

# one cheap pass per class after fix_output_shape; preprocessing fit for an 8-pixel-high model
CLASS_PASSES: dict[str, list[dict[str, Any]]] = {
    "high": [{"fix_output_shape": {}}, {"simplify": {}}],
    # the tiny model's classes are exactly params' charset (abcdef): prune one to have work to do
    "mid": [{"fix_output_shape": {}}, {"prune_charset": {"chars": "abcde"}}],
    "low": [
        {"fix_output_shape": {}},
        {"quantize_dynamic": {"op_types": ["LSTM", "Gemm", "MatMul"]}},
    ],
}
BUNDLES: dict[str, dict[str, Any]] = {
    "high": {"formats": ["onnx"]},
    "mid": {"formats": ["onnx"], "fallback": "float"},
    "low": {"formats": ["ort"], "fallback": "float"},
}
STYLE = {"width": 48, "height": 16, "font_size": [12, 14], "min_length": 2, "max_length": 3}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["VIRTUAL_ENV"] = str(BIN.parent)
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e["DVC_NO_ANALYTICS"] = "1"
    e["DVC_NO_UPDATER"] = "1"
    for k in ("GIT_AUTHOR", "GIT_COMMITTER"):
        e[f"{k}_NAME"] = "dvc tests"
        e[f"{k}_EMAIL"] = "dvc-tests@example.invalid"
    e.pop("PYTHONPATH", None)
    e.pop("GIT_DIR", None)
    e.pop("GIT_WORK_TREE", None)
    return e


def sh(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise AssertionError carrying its whole output."""
    p = subprocess.run(
        args,
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` in {cwd} exited {p.returncode}\n"
            f"--- stdout ---\n{p.stdout}\n--- stderr ---\n{p.stderr}"
        )
    return p


def dvc(cwd: Path, *args: str, check: bool = True, timeout: float = 300):
    return sh([str(BIN / "dvc"), *args], cwd, check=check, timeout=timeout)


def git(cwd: Path, *args: str, check: bool = True):
    return sh(["git", *args], cwd, check=check, timeout=60)


def output(p: subprocess.CompletedProcess[str]) -> str:
    return f"{p.stdout}\n{p.stderr}"


# `dvc repro` either runs a stage whose inputs changed or, when the run-cache already holds a run
# with these exact inputs (an earlier experiment, say), restores its outputs without running it
_RUNNING = re.compile(r"Running stage '([^']+)'")
_RESTORED = re.compile(r"Stage '([^']+)' is cached")


def ran_stages(p: subprocess.CompletedProcess[str]) -> set[str]:
    """Names of the stages `dvc repro` reproduced: ran, or restored from the run-cache."""
    text = output(p)
    return set(_RUNNING.findall(text)) | set(_RESTORED.findall(text))


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    if git(repo, "diff", "--cached", "--quiet", check=False).returncode != 0:
        git(repo, "commit", "-q", "-m", message)


def init_and_commit(dest: Path, message: str) -> None:
    """Make `dest` a git + DVC repository (no analytics, autostage) and commit all of it."""
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.name", "dvc tests")
    git(dest, "config", "user.email", "dvc-tests@example.invalid")
    git(dest, "config", "commit.gpgsign", "false")
    dvc(dest, "init", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "config", "core.autostage", "true")
    commit_all(dest, message)


def params() -> dict[str, Any]:
    real = yaml.safe_load((ROOT / "params.yaml").read_text())
    synthetic = {"calib": 6, "val": 6, "eval": 10}
    return {
        "targets": list(TARGETS),
        "model": {
            "source": "file",
            "path": "models/input/tiny.onnx",
            "charset": {"source": "file", "path": "models/input/charset.json"},
            "input": {"height": 8, "interpolation": "bilinear"},
        },
        "charset": "chars:abcdef",
        "data": {
            "synthetic": {
                "clean": {"seed": 1, **synthetic, "style": {"generator": "clean", **STYLE}},
                "hard": {"seed": 2, **synthetic, "style": {"generator": "hard", **STYLE}},
            },
            "folders": {"mine": {"path": "captchas/mine", "calib": 0.2, "val": 0.3}},
            "min_accuracy": 0.0,  # the tiny model reads no captcha: keep every source
        },
        "preprocess": {"images": 6, "candidates": {"area": {"interpolation": "area"}}},
        "evaluate": {"exact_check_images": 3},
        "bench": {
            "repeats": 1,
            "warm_images": 3,
            "warmup": 1,
            "long_session": 6,
            "baselines": ["stock"],
        },
        "serve": {"target": "high", "clients": [1], "requests": 8, "batching": [False]},
        # the machine running the tests, natively: verify@C does real work in seconds
        "profiles": {
            "here": {"arch": host_arch(), "note": "the test machine"},
            # declared by no class: an experiment adds it (make emulators installs its QEMU)
            "arm": {
                "arch": "aarch64",
                "requires": ["asimddp"],
                "qemu_cpu": "neoverse-n1",
                "note": "an emulated phone CPU",
            },
        },
        "verify": {"images": 4, "client_images": 4},
        "levers": {
            "eval_images": 4,
            "timing_images": 3,
            "agreement_goal": 0.97,
            "variants": {
                "high": {},
                "mid": {},
                "low": {"per_channel": {"quantize_dynamic": {"per_channel": True}}},
            },
        },
        "versions": real["versions"],
        # per_channel exists in the baseline so `dvc exp run -S` can set it without new keys
        "overrides": {
            "high": {},
            "mid": {},
            "low": {"passes": {"quantize_dynamic": {"per_channel": False}}, "profiles": ["here"]},
        },
    }


def recipe(target: str) -> dict[str, Any]:
    return {
        "description": f"tiny {target}",
        "passes": CLASS_PASSES[target],
        "runtime": {"intra_op_threads": 1},
        "bundle": BUNDLES[target],
        "profiles": ["here"],
    }


def write_folder(root: Path, n: int = 24) -> None:
    """captchas/mine: labeled images named '<label>_<i>.png' (the folder source)."""
    from stages.data import clean

    style = clean.CaptchaStyle(alphabet="abcdef", **{**STYLE, "font_size": (12, 14)})
    folder = root / "captchas" / "mine"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label, data = clean.sample(style, 99, i)
        (folder / f"{label}_{i:03d}.png").write_bytes(data)


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def copy_pipeline(dest: Path, names: tuple[str, ...]) -> None:
    """This checkout's `names` into `dest`; the JavaScript client's node_modules (`make js`) and
    the emulators (`make emulators`) are linked, not copied (445 and 255 MB): git ignores both,
    as in this checkout."""
    for name in names:
        src = ROOT / name
        if src.is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
            shutil.copytree(src, dest / name, ignore=skip)
        else:
            shutil.copy2(src, dest / name)
    modules = ROOT / "clients" / "js" / "node_modules"
    if "clients/js" in names and modules.is_dir():
        (dest / "clients" / "js" / "node_modules").symlink_to(modules)
    if EMULATORS.is_dir():
        (dest / ".emu").symlink_to(EMULATORS)


def make_repo(dest: Path) -> Path:
    """A committed git + DVC repository at `dest` holding the tiny pipeline (not yet built)."""
    import tiny

    from stages import modelio

    dest.mkdir(parents=True, exist_ok=True)
    copy_pipeline(dest, COPIED)
    (dest / "README.md").write_text(README)
    for target in TARGETS:
        write_yaml(dest / "configs" / f"{target}.yaml", recipe(target))
    write_yaml(dest / "params.yaml", params())
    write_folder(dest)

    model = tiny.tiny_ctc(classes=7, wrong_output_shape=False)
    inputs = dest / "models" / "input"
    inputs.mkdir(parents=True)
    onnx.save(model, str(inputs / "tiny.onnx"))
    (inputs / "charset.json").write_text(json.dumps(modelio.spec(model).charset))

    init_and_commit(dest, "tiny pipeline")
    return dest
