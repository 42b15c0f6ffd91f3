"""`recognize`: output formats and exit codes 0 / 3 / 4 / 1.

`cmd_recognize` is called with the Namespace its own `add_recognize_args` parses; the subprocess
test runs `python -m stages recognize` once stages/cli.py wires the verb.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_bundle import copy_bundle, make_bundle, png

from stages import cli
from stages.recognize import add_recognize_args, cmd_recognize
from stages.runtime import Recognizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli")).parent


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, p in enumerate(paths):
        p.write_bytes(png(i))
    return paths


def run(*argv: str | Path) -> int:
    ap = argparse.ArgumentParser()
    add_recognize_args(ap)
    return cmd_recognize(ap.parse_args([str(a) for a in argv]))


def test_text_lines_and_exit_0(cls_dir: Path, images: list[Path], capsys: pytest.CaptureFixture):
    assert run("--bundle", cls_dir, *images) == 0
    lines = capsys.readouterr().out.splitlines()
    rec = Recognizer.from_bundle(cls_dir)
    for line, path in zip(lines, images, strict=True):
        r = rec.predict(path)
        flag = [] if r.status == "ok" else [r.status]
        assert line.split("\t") == [str(path), r.text, *flag]


def test_json_lines_carry_the_full_result(
    cls_dir: Path, images: list[Path], capsys: pytest.CaptureFixture
):
    assert run("--bundle", cls_dir / "bundle", "--json", *images) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]
    for r in records:
        assert r["ok"] is True and r["model"] in ("primary", "fallback")
        assert {"text", "confidence", "status", "char_probs", "timings_ms", "events"} <= set(r)
        assert len(r["char_probs"]) == len(r["text"])


def test_bad_image_exit_3_names_the_code(
    cls_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run("--bundle", cls_dir, images[0], bad) == 3
    out = capsys.readouterr()
    assert out.out.splitlines()[1] == f"{bad}\t\tE_DECODE"
    assert "E_DECODE" in out.err and "Traceback" not in out.err
    assert run("--bundle", cls_dir, "--json", bad, tmp_path / "missing.png") == 3
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["error"]["code"] for r in records] == ["E_DECODE", "E_INPUT"]
    assert records[0]["ok"] is False and records[0]["error"]["retryable"] is False
    assert records[0]["error"]["advice"]


def test_bad_bundle_exit_4(
    cls_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    assert run("--bundle", tmp_path, *images) == 4
    assert "no manifest.json" in capsys.readouterr().err
    broken = copy_bundle(cls_dir / "bundle", tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"x")
    (broken / "fallback.onnx").write_bytes(b"y")
    assert run("--bundle", broken, *images) == 4
    assert "neither model could be loaded" in capsys.readouterr().err


def test_internal_error_exit_1(
    cls_dir: Path,
    images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    def boom(*_args: object, **_kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Recognizer, "predict", boom)
    assert run("--bundle", cls_dir, *images) == 1
    assert "internal error" in caplog.text and "boom" in caplog.text


@pytest.mark.skipif("recognize" not in cli.VERBS, reason="stages/cli.py does not wire it yet")
def test_python_m_stages_recognize(cls_dir: Path, images: list[Path], tmp_path: Path):
    def stages(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stages", "recognize", *map(str, argv)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    assert stages("--bundle", cls_dir, *images).returncode == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert stages("--bundle", cls_dir, bad).returncode == 3
    assert stages("--bundle", tmp_path, *images).returncode == 4
