"""Bundle trust: a manifest may only name files inside its folder, and an app that holds a
public key loads only bundles whose manifest.json that key signed (Ed25519, manifest.sig).

Paths are refused while the manifest is parsed: before any model file is read, and before
onnxruntime sees any bytes."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_runtime import copy_bundle, edit_manifest, make_bundle, png

from ocr_bundles_runtime import BundleError, Recognizer
from ocr_bundles_runtime import cli as runtime_cli
from ocr_bundles_runtime.manifest import inside, parse_bundle
from stages import cli
from stages.bundle import sign_bundle

OUTSIDE = Path("/etc/hostname")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("sec"), formats=("onnx",))


@pytest.fixture()
def bundle(built: Path, tmp_path: Path) -> Path:
    return copy_bundle(built, tmp_path / "bundle")


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A real file outside the bundle folder: /etc/hostname where there is one."""
    if OUTSIDE.is_file():
        return OUTSIDE
    path = tmp_path / "secret.txt"
    path.write_text("not yours\n")
    return path


def arm(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> list[Path]:
    """From now on, fail the test if onnxruntime is given a model or a file outside the
    bundle is read; returns the files read."""
    from ocr_bundles_runtime import recognizer

    read: list[Path] = []
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        read.append(self)
        resolved = self.resolve()
        assert resolved.is_relative_to(bundle.resolve()), f"read outside the bundle: {resolved}"
        return real_read(self)

    def no_session(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was opened")

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(recognizer.ort, "InferenceSession", no_session)
    return read


def entry(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def name_as_primary(folder: Path, name: str, target: Path) -> None:
    """Corrupt the manifest: the primary model is `name`, listed with `target`'s real hash."""
    doc = json.loads((folder / "manifest.json").read_text())
    doc["files"][name] = entry(target)
    doc["models"]["primary"]["files"]["onnx"] = name
    (folder / "manifest.json").write_text(json.dumps(doc))


# ---------------------------------------------------------------------------- paths


def escapes(bundle: Path) -> list[str]:
    up = "../" * (len(bundle.resolve().parts) + 1)  # more than enough to reach /
    return ["../../../etc/hostname", f"{up}etc/hostname", "models/../../model.onnx"]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_relative_path_out_of_the_folder_is_refused(
    bundle: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, which: int
):
    name = escapes(bundle)[which]
    name_as_primary(bundle, name, outside)
    read = arm(monkeypatch, bundle)
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        Recognizer.from_bundle(bundle)
    assert [p.name for p in read] == ["manifest.json"]


def test_an_absolute_path_is_refused(bundle: Path, outside: Path, monkeypatch: pytest.MonkeyPatch):
    name_as_primary(bundle, str(outside), outside)
    read = arm(monkeypatch, bundle)
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        Recognizer.from_bundle(bundle)
    assert [p.name for p in read] == ["manifest.json"]


def test_any_listed_file_out_of_the_folder_is_refused(
    bundle: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
):
    """Not only models: the charset and every `files` entry are checked."""
    good = json.loads((bundle / "manifest.json").read_text())
    as_charset = {**good, "charset": str(outside), "files": {str(outside): entry(outside)}}
    windows = {**good, "files": {"..\\..\\etc\\hostname": entry(outside), **good["files"]}}
    read = arm(monkeypatch, bundle)
    for doc in (as_charset, windows):
        (bundle / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(BundleError, match="leaves the bundle folder"):
            Recognizer.from_bundle(bundle)
    assert {p.name for p in read} == {"manifest.json"}


def test_a_symlink_out_of_the_folder_is_refused(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The model moved out and linked back: its hash still matches, but it is not inside."""
    away = tmp_path / "elsewhere"
    away.mkdir()
    os.replace(bundle / "model.onnx", away / "model.onnx")
    (bundle / "model.onnx").symlink_to(away / "model.onnx")
    read = arm(monkeypatch, bundle)
    with pytest.raises(BundleError, match="resolves outside the bundle folder"):
        Recognizer.from_bundle(bundle)
    assert [p.name for p in read] == ["manifest.json"]


def test_a_symlinked_folder_out_of_the_bundle_is_refused(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    away = tmp_path / "elsewhere"
    away.mkdir()
    os.replace(bundle / "model.onnx", away / "model.onnx")
    (bundle / "models").symlink_to(away)
    name_as_primary(bundle, "models/model.onnx", away / "model.onnx")
    read = arm(monkeypatch, bundle)
    with pytest.raises(BundleError, match="resolves outside the bundle folder"):
        Recognizer.from_bundle(bundle)
    assert [p.name for p in read] == ["manifest.json"]


def test_a_symlink_inside_the_folder_is_fine(bundle: Path):
    os.replace(bundle / "charset.json", bundle / "charset.real.json")
    (bundle / "charset.json").symlink_to("charset.real.json")
    assert Recognizer.from_bundle(bundle).predict(png()).text is not None


def test_inside_accepts_plain_names_only(tmp_path: Path):
    assert inside(tmp_path, "model.onnx") == (tmp_path / "model.onnx").resolve()
    assert inside(tmp_path, "sub/model.onnx") == (tmp_path / "sub" / "model.onnx").resolve()
    for bad in ("", "/abs", "../x", "a/../../x", "a\\b", "..", "a/.."):
        with pytest.raises(BundleError):
            inside(tmp_path, bad)


# ---------------------------------------------------------------------------- signatures


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    folder = tmp_path_factory.mktemp("keys")
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "public.pem").write_bytes(pem)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "private.pem").write_bytes(private_pem)
    other = Ed25519PrivateKey.generate().public_key()
    return {
        "private_pem": private_pem,
        "private_file": folder / "private.pem",
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": pem,
        "pem_file": folder / "public.pem",
        "other_raw": other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "other_pem": other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }


@pytest.fixture()
def signed(bundle: Path, keys: dict[str, Any]) -> Path:
    sign_bundle(bundle, keys["private_pem"])
    assert len((bundle / "manifest.sig").read_bytes()) == 64
    return bundle


@pytest.mark.parametrize("form", ["raw", "pem", "pem_text", "pem_file", "pem_path_text"])
def test_a_signed_bundle_verifies_with_its_public_key(
    signed: Path, keys: dict[str, Any], form: str
):
    key = {
        "raw": keys["raw"],
        "pem": keys["pem"],
        "pem_text": keys["pem"].decode(),
        "pem_file": keys["pem_file"],
        "pem_path_text": str(keys["pem_file"]),
    }[form]
    rec = Recognizer.from_bundle(signed, public_key=key)
    assert rec.predict(png()).text == Recognizer.from_bundle(signed).predict(png()).text


def test_unsigned_is_refused_when_a_key_is_required(bundle: Path, keys: dict[str, Any]):
    with pytest.raises(BundleError, match="unsigned bundle"):
        Recognizer.from_bundle(bundle, public_key=keys["raw"])


@pytest.mark.parametrize("form", ["other_raw", "other_pem"])
def test_another_key_is_refused(signed: Path, keys: dict[str, Any], form: str):
    with pytest.raises(BundleError, match="does not verify"):
        Recognizer.from_bundle(signed, public_key=keys[form])


def test_a_manifest_changed_after_signing_is_refused(signed: Path, keys: dict[str, Any]):
    Recognizer.from_bundle(signed, public_key=keys["raw"])
    edit_manifest(signed, confidence_threshold=0.0)  # e.g. to silence escalations
    with pytest.raises(BundleError, match="does not verify"):
        Recognizer.from_bundle(signed, public_key=keys["raw"])
    raw = (signed / "manifest.json").read_bytes()
    sign_bundle(signed, keys["private_pem"])
    (signed / "manifest.json").write_bytes(raw + b"\n")  # one byte is enough
    with pytest.raises(BundleError, match="does not verify"):
        Recognizer.from_bundle(signed, public_key=keys["raw"])


def test_a_swapped_signature_is_refused(signed: Path, keys: dict[str, Any], tmp_path: Path):
    sig = bytearray((signed / "manifest.sig").read_bytes())
    sig[0] ^= 1
    (signed / "manifest.sig").write_bytes(bytes(sig))
    with pytest.raises(BundleError, match="does not verify"):
        Recognizer.from_bundle(signed, public_key=keys["pem"])


def test_a_signed_manifest_still_checks_file_hashes(signed: Path, keys: dict[str, Any]):
    """The signature covers the hashes; a replaced model fails its hash, not the signature."""
    (signed / "charset.json").write_text('["", "x"]')
    with pytest.raises(BundleError, match=r"charset\.json: SHA-256"):
        Recognizer.from_bundle(signed, public_key=keys["raw"])


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (b"short", "neither 32 raw bytes nor a PEM key"),
        ("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n", "PEM"),
        ("ec", "not Ed25519"),
        ("missing", "cannot read"),
        (12345, "expected bytes"),
    ],
)
def test_unusable_keys_are_bundle_errors(signed: Path, tmp_path: Path, key: Any, match: str):
    if key == "ec":
        key = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    elif key == "missing":
        key = tmp_path / "absent.pem"
    with pytest.raises(BundleError, match=match):
        Recognizer.from_bundle(signed, public_key=key)


def test_an_app_without_a_key_loads_signed_and_unsigned_bundles(bundle: Path, signed: Path):
    assert Recognizer.from_bundle(bundle).model == "primary"
    assert parse_bundle(signed).threshold == parse_bundle(bundle).threshold
    assert Recognizer.from_bundle(signed).model == "primary"


def test_without_cryptography_a_key_gives_an_install_hint(
    signed: Path, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "cryptography.exceptions", None)  # import fails
    with pytest.raises(BundleError, match=r"ocr-bundles-runtime\[verify\]"):
        Recognizer.from_bundle(signed, public_key=keys["raw"])
    assert Recognizer.from_bundle(signed).model == "primary"  # no key: no import


def test_sign_verb_and_recognize_with_a_key(
    bundle: Path, keys: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
):
    """`python -m stages sign` signs; `python -m ocr_bundles_runtime --public-key` checks it."""
    image = tmp_path / "x.png"
    image.write_bytes(png())
    assert runtime_cli.main(["--bundle", str(bundle), "--public-key", str(keys["pem_file"]),
                             str(image)]) == 4  # fmt: skip
    assert "unsigned bundle" in capsys.readouterr().err
    assert cli.main(["sign", "--bundle", str(bundle), "--key", str(keys["private_file"])]) == 0
    assert (bundle / "manifest.sig").is_file()
    capsys.readouterr()
    assert runtime_cli.main(["--bundle", str(bundle), "--public-key", str(keys["pem_file"]),
                             str(image)]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"{image}\t")
    other = tmp_path / "other.pem"
    other.write_bytes(keys["other_pem"])
    assert runtime_cli.main(["--bundle", str(bundle), "--public-key", str(other),
                             str(image)]) == 4  # fmt: skip
    assert "does not verify" in capsys.readouterr().err
