"""The runtime installs alone: runtime/pyproject.toml builds a wheel of stages/runtime that,
in a fresh virtual environment with only its own dependencies (onnxruntime, numpy, Pillow,
and cryptography for the `verify` extra, fetched by pip from the registry or its cache),
recognizes an image from a bundle exactly as the repository's Recognizer does, without
importing any of the build pipeline, and checks the bundle's signature.

The wheel is built into tmp_path; the repository tree gets no build/, dist/ or *.egg-info.
About 10 s with pip's cache warm, 12 s cold (a first run downloads ~45 MB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from test_runtime import make_bundle, png

from stages.runtime import Recognizer

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
FORBIDDEN_TOP = {"dvc", "onnx", "onnxsim", "pydantic", "cv2", "yaml", "matplotlib"}
FORBIDDEN = ("stages.recipe", "stages.passes")
ARTIFACTS = ("build", "dist", "*.egg-info", "*.whl", "*.tar.gz", "__pycache__")

SCRIPT = """
import json, sys
from pathlib import Path

import stages.runtime
from stages.runtime import Recognizer

rec = Recognizer.from_bundle(sys.argv[1])
result = rec.predict(Path(sys.argv[2]).read_bytes())
print(json.dumps({
    "text": result.text,
    "confidence": result.confidence,
    "status": result.status,
    "file": stages.runtime.__file__,
    "modules": sorted(sys.modules),
}))
"""


def tree_state() -> set[str]:
    """Everything under runtime/, and build artifacts under stages/ and the repository root."""
    found = {p.relative_to(ROOT).as_posix() for p in RUNTIME.rglob("*")}
    for pattern in ARTIFACTS:
        found |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "stages").rglob(pattern)}
        if pattern != "__pycache__":  # the tests' own bytecode is not a build artifact
            found |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
    return {f for f in found if "__pycache__" not in f or f.startswith("runtime/")}


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


def test_the_runtime_installs_and_runs_alone(tmp_path: Path):
    t0 = time.monotonic()
    before = tree_state()
    bundle = make_bundle(tmp_path / "b", threshold=0.3)
    image = tmp_path / "x.png"
    image.write_bytes(png(3))
    expected = Recognizer.from_bundle(bundle).predict(image)
    public_pem = sign(bundle, tmp_path)

    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, RUNTIME, cwd=tmp_path)
    [wheel] = wheels.glob("ocr_bundles_runtime-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = sorted(n for n in names if ".dist-info/" not in n)
    assert code == sorted(
        f"stages/runtime/{p.name}" for p in (ROOT / "stages" / "runtime").glob("*.py")
    )  # stages/runtime only: no pycache, no stages/__init__.py (a namespace), no tests

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
    assert not [m for m in modules if m.startswith(FORBIDDEN)]
    assert "cryptography" not in modules  # imported only when the app asks for signatures
    assert out["text"] == expected.text and out["status"] == expected.status
    assert abs(out["confidence"] - expected.confidence) < 1e-6

    cli = (venv / "bin" / "ocr-recognize", "--bundle", bundle, "--public-key", public_pem, image)
    script = run(*cli, cwd=tmp_path, timeout=60)
    assert script.stdout.rstrip("\n").split("\t")[:2] == [str(image), expected.text]
    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes() + b" ")
    refused = subprocess.run([str(c) for c in cli], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 4 and "does not verify" in refused.stderr

    assert tree_state() == before, "the build left files in the repository"
    print(f"\nruntime install test: {time.monotonic() - t0:.1f} s")
