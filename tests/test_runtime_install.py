"""The runtime installs alone: runtime/pyproject.toml builds a wheel of the package
ocr_bundles_runtime that, in a fresh virtual environment with only its own dependencies
(onnxruntime, numpy, Pillow, and cryptography for the `verify` extra, fetched by pip from the
registry or its cache), recognizes an image from a bundle exactly as the repository's
Recognizer does, without importing any of the build pipeline, checks the bundle's signature and
passes the bundle's conformance check. A second environment holds the oldest versions the
runtime's dependency ranges admit, beside the app's own numpy and Pillow.

The wheel is built into tmp_path; the repository tree gets no build/, dist/ or *.egg-info.
About 30 s with pip's cache warm (a first run downloads ~90 MB).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import builders
import pytest
from test_runtime import make_bundle, png

from ocr_bundles_runtime import Recognizer

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
PACKAGE = RUNTIME / "ocr_bundles_runtime"
FORBIDDEN_TOP = {"stages", "dvc", "onnx", "onnxsim", "pydantic", "cv2", "yaml", "matplotlib"}
ARTIFACTS = ("build", "dist", "*.egg-info", "*.whl", "*.tar.gz", "__pycache__")
INT8_GRAPH = [
    {"fix_output_shape": {}},
    {"prune_charset": {"chars": "abcde"}},
    {"quantize_dynamic": {}},
]

SCRIPT = """
import json, sys
from pathlib import Path

import ocr_bundles_runtime
from ocr_bundles_runtime import Recognizer

rec = Recognizer.from_bundle(sys.argv[1])
result = rec.predict(Path(sys.argv[2]).read_bytes())
print(json.dumps({
    "text": result.text,
    "confidence": result.confidence,
    "status": result.status,
    "file": ocr_bundles_runtime.__file__,
    "modules": sorted(sys.modules),
}))
"""

# the texts of every image of the bundles given, from bytes (a zip) and from the folder
READS = """
import json, sys, zipfile, io
from pathlib import Path
import numpy, PIL, onnxruntime
from ocr_bundles_runtime import Recognizer

versions = {"numpy": numpy.__version__, "pillow": PIL.__version__}
out = {"versions": {**versions, "onnxruntime": onnxruntime.__version__}, "bundles": {}}
for folder in sys.argv[2:]:
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"bundle/{p.name}")
    rec = Recognizer.from_bytes(buf.getvalue())
    report = rec.check()
    images = sorted(Path(sys.argv[1]).glob("*.png"))
    out["bundles"][folder.name] = {
        "check": report.ok, "reason": report.reason,
        "texts": [rec.predict(p.read_bytes()).text for p in images],
    }
print(json.dumps(out))
"""


def oldest() -> list[str]:
    """Each dependency at the lowest release series its range admits (`>=1.24` -> `==1.24.*`)."""
    deps = tomllib.loads((RUNTIME / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", dep)
        assert m, f"runtime dependency {dep!r} has no lower bound to test"
        pins.append(f"{m[1]}=={m[2]}.*")
    return pins


def tree_state() -> set[str]:
    """Everything under runtime/, and build artifacts under stages/ and the repository root."""
    found = {p.relative_to(ROOT).as_posix() for p in RUNTIME.rglob("*")}
    for pattern in ARTIFACTS:
        for folder in (ROOT / "stages", PACKAGE):
            found |= {p.relative_to(ROOT).as_posix() for p in folder.rglob(pattern)}
        if pattern != "__pycache__":  # the tests' own bytecode is not a build artifact
            found |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
    return {f for f in found if "__pycache__" not in f}


def sign(bundle: Path, folder: Path) -> Path:
    """Sign `bundle` with a fresh Ed25519 key; returns the public key's PEM file."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stages.bundle import sign_bundle

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    sign_bundle(bundle, pem)
    public = folder / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    return public


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INPUT"] = "1"
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = tree_state()
    wheels = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, RUNTIME, cwd=wheels)
    [built] = wheels.glob("ocr_bundles_runtime-*.whl")
    assert tree_state() == before, "the build left files in the repository"
    return built


def test_the_runtime_installs_and_runs_alone(tmp_path: Path, wheel: Path):
    t0 = time.monotonic()
    bundle = make_bundle(tmp_path / "b", threshold=0.3)
    image = tmp_path / "x.png"
    image.write_bytes(png(3))
    expected = Recognizer.from_bundle(bundle).predict(image)
    public_pem = sign(bundle, tmp_path)

    venv = tmp_path / "venv"
    names = zipfile.ZipFile(wheel).namelist()
    code = sorted(n for n in names if ".dist-info/" not in n)
    assert code == sorted(f"ocr_bundles_runtime/{p.name}" for p in PACKAGE.glob("*.py"))

    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # with the `verify` extra: cryptography, for signed bundles
    run(
        sys.executable, "-m", "pip", "--python", python, "install", f"{wheel}[verify]", cwd=tmp_path
    )
    pip_list = (sys.executable, "-m", "pip", "--python", python, "list", "--format=json")
    installed = run(*pip_list, cwd=tmp_path, timeout=60)
    dists = {d["name"].lower() for d in json.loads(installed.stdout)}
    assert {"ocr-bundles-runtime", "onnxruntime", "numpy", "pillow", "cryptography"} <= dists
    assert not dists & {"ocr-bundles", "onnx", "pydantic", "dvc", "opencv-python-headless"}

    # -I: neither the current folder nor PYTHONPATH is on sys.path, so the repository's own
    # stages/ cannot be imported by mistake
    proc = run(python, "-I", "-c", SCRIPT, bundle, image, cwd=tmp_path, timeout=60)
    out = json.loads(proc.stdout)
    assert Path(out["file"]).is_relative_to(venv)
    modules = set(out["modules"])
    assert not {m.split(".")[0] for m in modules} & FORBIDDEN_TOP
    assert "cryptography" not in modules  # imported only when the app asks for signatures
    assert out["text"] == expected.text and out["status"] == expected.status
    assert abs(out["confidence"] - expected.confidence) < 1e-6

    check = run(venv / "bin" / "ocr-recognize", "--bundle", bundle, "--check", cwd=tmp_path)
    assert "healthy" in check.stderr

    cli = (venv / "bin" / "ocr-recognize", "--bundle", bundle, "--public-key", public_pem, image)
    script = run(*cli, cwd=tmp_path, timeout=60)
    assert script.stdout.rstrip("\n").split("\t")[:2] == [str(image), expected.text]
    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes() + b" ")
    refused = subprocess.run([str(c) for c in cli], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 4 and "does not verify" in refused.stderr

    print(f"\nruntime install test: {time.monotonic() - t0:.1f} s")


def test_the_oldest_admitted_versions_pass_the_conformance_check(tmp_path: Path, wheel: Path):
    """An app's older numpy, Pillow and onnxruntime: the bundles (host and in-graph
    preprocessing, .onnx and .ort, float and int8) load from zip bytes, pass their own
    conformance check and read what the pipeline's environment reads."""
    bundles = [
        builders.tiny_bundle(tmp_path / "host", target="host"),
        builders.tiny_bundle(
            tmp_path / "graph",
            passes=INT8_GRAPH,
            target="graph",
            bundle={"preprocess": "graph", "formats": ["ort", "onnx"]},
        ),
    ]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        (images / f"{i}.png").write_bytes(png(i))
    expected = {
        b.name: [Recognizer.from_bundle(b).predict(p).text for p in sorted(images.glob("*.png"))]
        for b in bundles
    }
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pins = oldest()
    run(sys.executable, "-m", "pip", "--python", python, "install", wheel, *pins, cwd=tmp_path)
    proc = run(python, "-I", "-c", READS, images, *bundles, cwd=tmp_path, timeout=120)
    out = json.loads(proc.stdout)
    for pin in pins:  # e.g. numpy==1.24.*: 1.24.4 installed
        name, series = pin.removesuffix(".*").split("==")
        assert out["versions"][name].startswith(series + "."), out["versions"]
    for name, got in out["bundles"].items():
        assert got["check"], f"{name} on {out['versions']}: {got['reason']}"
        assert got["texts"] == expected[name]
