"""SIGKILL while `python -m stages synthetic` writes a data source and while `write_build` writes
a build: the final path holds the previous complete output or nothing, leftovers are hidden temp
folders, and a rerun gives identical bytes. Also: a data source rerun is byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from stages import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
STYLE = {"width": 64, "height": 24, "font_size": [14, 16], "min_length": 2, "max_length": 3}
EVAL = 1200  # images in the eval split: a run takes a few seconds, enough to be killed in


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` outside hidden entries, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def hidden_leftovers_only(folder: Path, finals: tuple[str, ...]) -> list[str]:
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    extra = [n for n in names if n not in finals]
    assert all(n.startswith(".") for n in extra), names
    return extra


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"finished before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"


# ------------------------------------------------------------------ a synthetic data source


def data_params(folder: Path, seed: int, eval_: int) -> Path:
    source = {"seed": seed, "calib": 8, "val": 8, "eval": eval_, "style": STYLE}
    params = {
        "targets": ["low"],
        "versions": {},
        "overrides": {"low": {}},
        "data": {"synthetic": {"clean": source}},
    }
    path = folder / f"params-{seed}-{eval_}.yaml"
    path.write_text(json.dumps(params))
    return path


def start_synthetic(params: Path, out: Path, log: Path) -> subprocess.Popen:
    argv = ["synthetic", "--source", "clean", "--params", str(params), "--out", str(out)]
    with log.open("wb") as err:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(
            [sys.executable, "-m", "stages", *argv],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def run_synthetic(params: Path, out: Path) -> dict[str, bytes]:
    log = params.parent / "run.log"
    proc = start_synthetic(params, out, log)
    assert proc.wait(timeout=120) == 0, log.read_text()
    log.unlink()
    return tree(out)


def writing_eval(out: Path):
    """True once the source's hidden temp folder holds part of the eval split (the run is
    writing its last split)."""

    def check() -> bool:
        return any(
            len(os.listdir(t / "eval")) > 50
            for t in out.parent.glob(f".{out.name}.tmp-*")
            if (t / "eval").is_dir()
        )

    return check


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """An uninterrupted run: the bytes every rerun must reproduce."""
    root = tmp_path_factory.mktemp("ref")
    params = data_params(root, 5, EVAL)
    ref = run_synthetic(params, root / "data" / "clean")
    assert sum(name.startswith("eval/") for name in ref) == EVAL + 1  # images + labels.json
    return params, ref


def test_synthetic_killed_while_writing_into_a_fresh_folder(tmp_path: Path, reference):
    params, ref = reference
    out = tmp_path / "data" / "clean"
    proc = start_synthetic(params, out, tmp_path / "killed.log")
    wait_for(writing_eval(out), proc)
    kill(proc)
    assert not out.exists()  # no partial source at the final path, not even calib and val
    assert hidden_leftovers_only(out.parent, ("clean",)), "the killed run's temp folder is hidden"
    assert run_synthetic(params, out) == ref
    hidden_leftovers_only(out.parent, ("clean",))


def test_synthetic_killed_keeps_the_previous_source(tmp_path: Path, reference):
    params, ref = reference
    out = tmp_path / "data" / "clean"
    old = run_synthetic(data_params(tmp_path, 6, 40), out)
    assert sum(name.startswith("eval/") for name in old) == 41 and old != ref
    proc = start_synthetic(params, out, tmp_path / "killed.log")
    wait_for(writing_eval(out), proc)
    kill(proc)
    assert tree(out) == old, "the previous source was touched"
    hidden_leftovers_only(out.parent, ("clean",))
    assert run_synthetic(params, out) == ref
    hidden_leftovers_only(out.parent, ("clean",))


# ------------------------------------------------------------------ a folder source, rerun


def labeled_images(folder: Path) -> Path:
    """A few labeled images, one exact duplicate and one file without a label."""
    folder.mkdir(parents=True)
    for i, label in enumerate(["ab", "c7", "x9k", "pq", "zz1", "m0", "k3", "aa"]):
        Image.new("L", (40, 16), 20 * i).save(folder / f"{label}_{i}.png")
    (folder / "dup_99.png").write_bytes((folder / "ab_0.png").read_bytes())
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def folder_params(root: Path, images: Path) -> Path:
    params = {
        "targets": ["low"],
        "versions": {},
        "overrides": {"low": {}},
        "data": {"folders": {"mine": {"path": str(images), "calib": 0.25, "val": 0.25}}},
    }
    path = root / "params.yaml"
    path.write_text(json.dumps(params))
    return path


def run_folder(capsys: pytest.CaptureFixture[str], params: Path, out: Path) -> dict[str, bytes]:
    argv = ["folder", "--source", "mine", "--params", str(params), "--out", str(out)]
    rc = cli.main(argv)
    assert rc == 0, capsys.readouterr().err
    return tree(out)


def test_folder_source_rerun_is_byte_identical(tmp_path: Path, capsys):
    params = folder_params(tmp_path, labeled_images(tmp_path / "imgs"))
    out = tmp_path / "data" / "mine"
    first = run_folder(capsys, params, out)
    assert run_folder(capsys, params, out) == first
    summary = json.loads(first["summary.json"])
    assert summary["duplicates"][0]["name"] == "dup_99.png"
    assert summary["ignored"] == ["notes.txt"]
    hidden_leftovers_only(out.parent, ("mine",))


def test_folder_source_with_an_unreadable_image_reruns_identically(tmp_path: Path, capsys):
    images = labeled_images(tmp_path / "imgs")
    (images / "bad_5.png").write_bytes(b"not a png at all")
    params = folder_params(tmp_path, images)
    out = tmp_path / "data" / "mine"
    first = run_folder(capsys, params, out)
    assert json.loads(first["summary.json"])["skipped"][0]["name"] == "bad_5.png"
    assert b" object at 0x" not in first["summary.json"]
    assert run_folder(capsys, params, out) == first


# ------------------------------------------------------------------ a build

BUILD = """
import os, sys, time
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
import builders, tiny
from stages import modelio
from stages.build import StageResult, write_build
from stages.recipe import Recipe
from ocr_bundles_runtime.preprocess import Preprocess

out, variant, pause = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
save, replace = modelio.save, os.replace

def slow_save(model, path):
    save(model, path)
    if pause == "save":
        print("saved", path, flush=True)
        time.sleep(30)

def slow_replace(src, dst):
    replace(src, dst)
    if pause == "swap" and Path(src) == out:  # the old build was just moved aside
        print("aside", flush=True)
        time.sleep(30)

modelio.save, os.replace = slow_save, slow_replace
DIV = {{"max_abs_diff": 0.0, "max_rel_diff": 0.0, "argmax_agreement": 1.0, "dropped_best": 0.0}}
stages = {{
    "old": [("float", tiny.tiny_ctc(wrong_output_shape=False))],
    "new": [
        ("fix_output_shape", tiny.tiny_ctc(wrong_output_shape=False)),
        ("final", tiny.tiny_ctc(wrong_output_shape=False, seed=2)),
    ],
}}[variant]
results = [StageResult(i, n, m, 0.0, True, DIV) for i, (n, m) in enumerate(stages, 1)]
recipe = Recipe(description="tiny", passes=[], preprocess=Preprocess(height=tiny.HEIGHT))
write_build(out, recipe, results, "tiny", contract=builders.contract_of(stages[-1][1]))
print("done", flush=True)
""".format(root=str(ROOT), tests=str(ROOT / "tests"))
# build/<C>/: the model folder, the timings and the divergences beside it
FINALS = ("model", "timings.json", "checks.json")


def start_build(out: Path, variant: str, pause: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(out), variant, pause],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_build(out: Path, variant: str) -> dict[str, bytes]:
    """build/<C>/ after an uninterrupted write: the model folder, timings and checks."""
    proc = start_build(out, variant)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stdout.strip() == "done", stderr
    return tree(out.parent)


def killed_build(out: Path, pause: str) -> None:
    proc = start_build(out, "new", pause)
    line = proc.stdout.readline()  # blocks until the pause point is reached
    assert line.startswith("saved" if pause == "save" else "aside"), proc.stderr.read()
    kill(proc)


def model_part(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k.removeprefix("model/"): v for k, v in files.items() if k.startswith("model/")}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("builds")
    out = {v: run_build(root / v / "tiny" / "model", v) for v in ("old", "new")}
    assert {"model/model.onnx", "model/build.json", "timings.json"} <= set(out["new"])
    assert "model/stages/02-final.onnx" in out["new"]
    return out


@pytest.mark.parametrize("pause", ["save", "swap"])
def test_build_killed_keeps_the_old_build_or_nothing(tmp_path: Path, builds, pause: str):
    out = tmp_path / "tiny" / "model"
    assert run_build(out, "old") == builds["old"]
    killed_build(out, pause)
    if pause == "save":  # killed while writing the new folder: the old build is untouched
        assert tree(out.parent) == builds["old"]
    else:  # killed between the two renames: nothing at the final path, the old build aside
        assert not out.exists()
        (aside,) = out.parent.glob(".model.old-*")
        assert tree(aside) == model_part(builds["old"])
        assert tree(out.parent) == {
            "timings.json": builds["old"]["timings.json"],
            "checks.json": builds["old"]["checks.json"],
        }
    hidden_leftovers_only(out.parent, FINALS)
    assert run_build(out, "new") == builds["new"]
    hidden_leftovers_only(out.parent, FINALS)


def test_build_killed_into_a_fresh_folder_leaves_nothing(tmp_path: Path, builds):
    out = tmp_path / "tiny" / "model"
    killed_build(out, "save")
    assert not out.exists()
    (leftover,) = hidden_leftovers_only(out.parent, FINALS)
    assert leftover.startswith(".model.tmp-")
    # the killed run's temp folder: only the first stage model was written
    assert sorted(p.name for p in (out.parent / leftover / "stages").iterdir()) == [
        "01-fix_output_shape.onnx"
    ]
    assert run_build(out, "new") == builds["new"]
