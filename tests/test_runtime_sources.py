"""A bundle loads from bytes as from its folder: Recognizer.from_files (a mapping of file names
to bytes, e.g. app assets) and Recognizer.from_bytes (one zip archive), with the same hash,
path and signature checks and the same results."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from test_runtime import key, make_bundle, png

from ocr_bundles_runtime import BundleError, Recognizer
from ocr_bundles_runtime.files import MAX_ZIP_BYTES


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8 .ort primary read with ort_bytes_for_initializers, float fallback, threshold 1: every
    image reruns with the fallback, so both models run from bytes."""
    return make_bundle(
        tmp_path_factory.mktemp("src"),
        threshold=1.0,
        formats=("ort", "onnx"),
        runtime={"ort_bytes_for_initializers": True},
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def zipped(files: dict[str, bytes], folder: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(folder + name, data)
    return buf.getvalue()


def reads(rec: Recognizer) -> list[tuple]:
    return [key(rec.predict(png(i))) for i in range(4)]


def test_files_and_zip_read_as_the_folder_does(bundle: Path):
    expected = reads(Recognizer.from_bundle(bundle))
    files = files_of(bundle)
    for rec in (
        Recognizer.from_files(files),
        Recognizer.from_bytes(zipped(files)),
        Recognizer.from_bytes(zipped(files, "low/")),  # `zip -r low.zip low/`
    ):
        assert rec.model_file == "model.ort" and rec.events == []
        assert reads(rec) == expected
        assert rec.fallback_loaded  # the fallback ran from bytes too
        assert rec.check().ok


def test_an_optional_fallback_may_be_left_out(bundle: Path):
    files = files_of(bundle)
    del files["fallback.ort"]
    rec = Recognizer.from_files(files)
    r = rec.predict(png())
    assert "no_rerun: the optional fallback (fallback.ort) is not shipped" in r.events
    assert rec.events == []


def test_a_changed_file_is_refused_by_its_hash(bundle: Path):
    files = files_of(bundle)
    files["charset.json"] = files["charset.json"].replace(b'"a"', b'"z"')
    with pytest.raises(BundleError, match=r"charset.json: SHA-256 .* does not match"):
        Recognizer.from_files(files, name="assets/low")


def test_a_tampered_primary_loads_the_fallback_from_bytes(bundle: Path):
    files = files_of(bundle)
    files["model.ort"] = files["model.ort"][:-1] + bytes([files["model.ort"][-1] ^ 1])
    rec = Recognizer.from_files(files)
    assert rec.model == "fallback"
    assert rec.events[0].startswith("primary_failed: model.ort: SHA-256")


@pytest.mark.parametrize("name", ["../evil", "/abs", "a\\b", ""])
def test_names_that_leave_the_bundle_are_refused(bundle: Path, name: str):
    files = {**files_of(bundle), name: b"x"}
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        Recognizer.from_files(files)
    if name:  # zipfile cannot write a member without a name
        with pytest.raises(BundleError, match="leaves the bundle folder"):
            Recognizer.from_bytes(zipped(files))


def test_what_is_not_a_bundle_is_named(bundle: Path):
    files = files_of(bundle)
    with pytest.raises(BundleError, match=r"<bundle in memory>/manifest\.json: missing"):
        Recognizer.from_files({k: v for k, v in files.items() if k != "manifest.json"})
    with pytest.raises(BundleError, match="maps to str"):
        Recognizer.from_files({**files, "charset.json": "text"})  # type: ignore[dict-item]
    with pytest.raises(BundleError, match=r"app\.zip: not a zip archive"):
        Recognizer.from_bytes(b"PK not really", name="app.zip")
    mixed = io.BytesIO(zipped(files, "a/"))
    with zipfile.ZipFile(mixed, "a") as z:
        z.writestr("b/manifest.json", files["manifest.json"])
    with pytest.raises(BundleError, match=r"no manifest\.json at the top"):
        Recognizer.from_bytes(mixed.getvalue())


def test_a_zip_that_expands_too_far_is_refused(monkeypatch: pytest.MonkeyPatch, bundle: Path):
    monkeypatch.setattr("ocr_bundles_runtime.files.MAX_ZIP_BYTES", 1000)
    assert MAX_ZIP_BYTES == 1 << 30  # the real limit: a bundle is megabytes
    with pytest.raises(BundleError, match="over 1000"):
        Recognizer.from_bytes(zipped(files_of(bundle)))


def test_a_bundle_from_bytes_has_no_folder(bundle: Path):
    rec = Recognizer.from_files(files_of(bundle), name="assets/low")
    assert rec.spec.where == "assets/low"
    with pytest.raises(BundleError, match="given as bytes, not a folder"):
        _ = rec.spec.root


def test_signatures_are_checked_from_bytes(bundle: Path, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stages.bundle import sign_bundle

    signed = tmp_path / "signed"
    signed.mkdir()
    for name, data in files_of(bundle).items():
        (signed / name).write_bytes(data)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    sign_bundle(signed, pem)
    public = private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    files = files_of(signed)
    assert Recognizer.from_bytes(zipped(files), public_key=public).check().ok
    with pytest.raises(BundleError, match="unsigned bundle"):
        Recognizer.from_files(files_of(bundle), public_key=public)
    files["manifest.json"] += b" "
    with pytest.raises(BundleError, match="does not verify"):
        Recognizer.from_files(files, public_key=public)
