"""`recognize`: output formats and exit codes 0 / 3 / 4 / 1.

`cmd_recognize` is called with the Namespace its own `add_recognize_args` parses; the
subprocess tests run `python -m ocr_bundles_runtime` (what a runtime-only install has) and
`python -m stages recognize` (the same code behind the build CLI).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime import copy_bundle, make_bundle, png

from ocr_bundles_runtime import Recognizer
from ocr_bundles_runtime.cli import add_recognize_args, cmd_recognize
from stages import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli"), threshold=0.3)


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


def test_text_lines_and_exit_0(bundle: Path, images: list[Path], capsys: pytest.CaptureFixture):
    assert run("--bundle", bundle, *images) == 0
    lines = capsys.readouterr().out.splitlines()
    rec = Recognizer.from_bundle(bundle)
    for line, path in zip(lines, images, strict=True):
        r = rec.predict(path)
        flag = [] if r.status == "ok" else [r.status]
        assert line.split("\t") == [str(path), r.text, *flag]


def test_json_lines_carry_the_full_result(
    bundle: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    copy_bundle(bundle, tmp_path / "cls" / "bundle")  # a folder holding bundle/ is accepted
    assert run("--bundle", tmp_path / "cls", "--json", *images) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]
    for r in records:
        assert r["ok"] is True and r["model"] in ("primary", "fallback")
        assert {"text", "confidence", "status", "char_probs", "timings_ms", "events"} <= set(r)
        assert len(r["char_probs"]) == len(r["text"])


def test_format_and_providers_options(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture
):
    both = make_bundle(tmp_path, formats=("ort", "onnx"))
    onnx_only = make_bundle(tmp_path / "onnx_only")
    capsys.readouterr()  # the build's progress lines
    assert run("--bundle", both, "--format", "onnx", "--json", images[0]) == 0
    onnx = json.loads(capsys.readouterr().out)
    args = ("--bundle", both, "--providers", "NoSuchProvider,CPUExecutionProvider", "--json")
    assert run(*args, images[0]) == 0
    ort = json.loads(capsys.readouterr().out)
    assert onnx["text"] == ort["text"]
    assert run("--bundle", onnx_only, "--format", "ort", *images) == 4
    assert "not 'ort'" in capsys.readouterr().err


def test_bad_image_exit_3_names_the_code(
    bundle: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run("--bundle", bundle, images[0], bad) == 3
    out = capsys.readouterr()
    assert out.out.splitlines()[1] == f"{bad}\t\tE_DECODE"
    assert "E_DECODE" in out.err and "Traceback" not in out.err
    assert run("--bundle", bundle, "--json", bad, tmp_path / "missing.png") == 3
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["error"]["code"] for r in records] == ["E_DECODE", "E_INPUT"]
    assert records[0]["ok"] is False and records[0]["error"]["retryable"] is False
    assert records[0]["error"]["advice"]


def test_bad_bundle_exit_4(
    bundle: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    assert run("--bundle", tmp_path, *images) == 4
    assert "no manifest.json" in capsys.readouterr().err
    broken = copy_bundle(bundle, tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"x")
    (broken / "fallback.onnx").write_bytes(b"y")
    assert run("--bundle", broken, *images) == 4
    assert "no model could be loaded" in capsys.readouterr().err


def test_server_options(bundle: Path, images: list[Path], capsys: pytest.CaptureFixture):
    """--server overrides the manifest; an unreachable one keeps the local text."""
    base = ("--bundle", bundle, "--json")
    assert run(*base, images[0]) == 0
    local = json.loads(capsys.readouterr().out)
    unreachable = ("--server", "http://127.0.0.1:9/v1/recognize", "--server-timeout", "0.5")
    assert run(*base, *unreachable, images[0]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["text"] == local["text"]
    assert r["status"] == ("server_unreachable" if local["status"] == "needs_server" else "ok")
    for option in (("--server", "not a url"), ("--server-timeout", "0")):
        with pytest.raises(SystemExit) as e:  # argparse: a usage error, exit 2
            run(*base, *option, images[0])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not an http" in err and "(0, 600]" in err


def test_internal_error_exit_1(
    bundle: Path,
    images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    def boom(*_args: object, **_kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Recognizer, "predict", boom)
    assert run("--bundle", bundle, *images) == 1
    assert "internal error" in caplog.text and "boom" in caplog.text


def _python_m(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", *map(str, argv)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_python_m_stages_runtime(bundle: Path, images: list[Path], tmp_path: Path):
    ok = _python_m("ocr_bundles_runtime", "--bundle", bundle, *images)
    assert ok.returncode == 0, ok.stderr
    assert [line.split("\t")[0] for line in ok.stdout.splitlines()] == [str(p) for p in images]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert _python_m("ocr_bundles_runtime", "--bundle", bundle, bad).returncode == 3
    assert _python_m("ocr_bundles_runtime", "--bundle", tmp_path, *images).returncode == 4


def test_python_m_stages_recognize(bundle: Path, images: list[Path], tmp_path: Path):
    assert "recognize" in cli.VERBS
    ok = _python_m("stages", "recognize", "--bundle", bundle, *images)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert _python_m("stages", "recognize", "--bundle", bundle, bad).returncode == 3
    assert _python_m("stages", "recognize", "--bundle", tmp_path, *images).returncode == 4
