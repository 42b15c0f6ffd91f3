"""SIGKILL during `python -m stages data` and during write_build: the final path holds the previous
complete output or nothing, leftovers are hidden temp dirs, and a rerun gives identical bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
SPLITS = ("calib", "val", "eval")
STYLE = {"width": 64, "height": 24, "font_size": [14, 16], "min_length": 2, "max_length": 3}


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


# ------------------------------------------------------------------ data


def data_params(folder: Path, seed: int, eval_: int) -> Path:
    data = {"seed": seed, "calib": 8, "val": 8, "eval": eval_, "style": STYLE}
    path = folder / f"params-{seed}-{eval_}.yaml"
    path.write_text(json.dumps({"targets": ["low"], "versions": {}, "data": data}))
    return path


def start_data(params: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages", "data", "--params", str(params), "--out", str(out)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_data(params: Path, out: Path) -> None:
    proc = start_data(params, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


def writing_eval(out: Path):
    """True once the eval split's hidden temp dir holds some images (the run is writing)."""

    def check() -> bool:
        return any(len(os.listdir(t)) > 50 for t in out.glob(".eval.tmp-*") if t.is_dir())

    return check


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """An uninterrupted run: the bytes every rerun must reproduce."""
    root = tmp_path_factory.mktemp("ref")
    params = data_params(root, 5, 3000)
    run_data(params, root / "data")
    return params, {s: tree(root / "data" / s) for s in SPLITS}


def test_data_killed_while_writing_into_a_fresh_folder(tmp_path: Path, reference):
    params, ref = reference
    out = tmp_path / "data"
    proc = start_data(params, out)
    wait_for(writing_eval(out), proc)
    kill(proc)
    assert not (out / "eval").exists()  # no partial split at the final path
    assert {s: tree(out / s) for s in ("calib", "val")} == {s: ref[s] for s in ("calib", "val")}
    assert hidden_leftovers_only(out, SPLITS), "the killed run's temp dir should be hidden"
    run_data(params, out)
    assert {s: tree(out / s) for s in SPLITS} == ref
    hidden_leftovers_only(out, SPLITS)


def test_data_killed_keeps_the_previous_split(tmp_path: Path, reference):
    params, ref = reference
    out = tmp_path / "data"
    run_data(data_params(tmp_path, 6, 40), out)
    old = {s: tree(out / s) for s in SPLITS}
    assert len(old["eval"]) == 41 and old["eval"] != ref["eval"]

    def each_split_whole() -> None:
        for s in SPLITS:
            assert (out / s).exists(), f"{s}: the previous split is gone"
            assert tree(out / s) in (old[s], ref[s]), f"{s}: partial split at the final path"

    proc = start_data(params, out)
    time.sleep(1.0)
    kill(proc)
    each_split_whole()
    proc = start_data(params, out)
    wait_for(writing_eval(out), proc)
    kill(proc)
    each_split_whole()
    assert tree(out / "eval") == old["eval"]
    hidden_leftovers_only(out, SPLITS)
    run_data(params, out)
    assert {s: tree(out / s) for s in SPLITS} == ref
    hidden_leftovers_only(out, SPLITS)


# ------------------------------------------------------------------ build

BUILD = """
import os, sys, time
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
from test_bundle import DIV, float_model, recipe, sharpened
from stages import modelio
from stages.build import StageResult, write_build

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
stages = {{
    "old": [("float", float_model())],
    "new": [("sharpen", sharpened(float_model())), ("final", sharpened(float_model(), 2.0))],
}}[variant]
results = [StageResult(i, n, m, 0.0, DIV) for i, (n, m) in enumerate(stages, 1)]
write_build(out, recipe(), results, "tiny")
print("done", flush=True)
""".format(root=str(ROOT), tests=str(ROOT / "tests"))


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
    proc = start_build(out, variant)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stdout.strip() == "done", stderr
    return tree(out)


def killed_build(out: Path, pause: str) -> None:
    proc = start_build(out, "new", pause)
    line = proc.stdout.readline()  # blocks until the pause point is reached
    assert line.startswith("saved" if pause == "save" else "aside"), proc.stderr.read()
    kill(proc)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("builds")
    return {v: run_build(root / v / "model", v) for v in ("old", "new")}


@pytest.mark.parametrize("pause", ["save", "swap"])
def test_build_killed_keeps_the_old_build_or_nothing(tmp_path: Path, builds, pause: str):
    out = tmp_path / "tiny" / "model"
    assert run_build(out, "old") == builds["old"]
    killed_build(out, pause)
    if pause == "save":
        assert tree(out) == builds["old"]
    else:  # killed between the two renames: nothing at the final path, the old build aside
        assert not out.exists()
        (aside,) = out.parent.glob(".model.old-*")
        assert tree(aside) == builds["old"]
    hidden_leftovers_only(out.parent, ("model",))
    assert run_build(out, "new") == builds["new"]
    assert not (out.parent / ".model.tmp").exists()
    hidden_leftovers_only(out.parent, ("model",))


def test_build_killed_into_a_fresh_folder_leaves_nothing(tmp_path: Path, builds):
    out = tmp_path / "tiny" / "model"
    killed_build(out, "save")
    assert not out.exists()
    assert hidden_leftovers_only(out.parent, ("model",)) == [".model.tmp"]
    assert run_build(out, "new") == builds["new"]
