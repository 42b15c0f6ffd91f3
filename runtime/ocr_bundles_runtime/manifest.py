"""Reading a bundle an app may have received over the network, from a folder or from bytes
(files.py): manifest.json, its hashes, the paths it names (never outside the bundle) and an
optional Ed25519 signature.

Standard library only, plus `cryptography` when (and only when) the app asks for signatures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decode import decode
from .errors import BundleError
from .files import MANIFEST, BundleFiles, Folder
from .manifest_record import FORMAT, READABLE_VERSIONS, BundleManifest, ModelFiles
from .preprocess import Preprocess
from .session import Runtime

SIGNATURE = "manifest.sig"  # raw 64-byte Ed25519 signature of manifest.json's exact bytes
ROLES = ("primary", "fallback")

PublicKey = bytes | str | Path
Source = Path | BundleFiles  # a folder, or files.Memory / files.from_zip


@dataclass(frozen=True)
class ModelEntry:
    """One model of the bundle: its file per format and whether an app must ship it."""

    role: str
    files: dict[str, str]  # format ("ort" | "onnx") -> file name
    optional: bool  # the fallback: an app may leave it out; the runtime then never retries


@dataclass(frozen=True)
class BundleSpec:
    """The parsed bundle: the typed manifest (the contract as the bundle carries it: input,
    preprocess, output, scoring), the hash-checked charset and the model entries. Every other
    value is the manifest's own field, read through it, never copied."""

    files: BundleFiles
    manifest: BundleManifest
    charset: list[str]
    models: dict[str, ModelEntry]

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess

    @property
    def runtime(self) -> Runtime:
        return self.manifest.runtime

    @property
    def layout(self) -> str:
        return self.manifest.output.layout

    @property
    def blank(self) -> int:
        return self.manifest.output.blank

    @property
    def kind(self) -> str:  # logits | probabilities
        return self.manifest.output.kind

    @property
    def threshold(self) -> float:
        return self.manifest.confidence_threshold

    @property
    def batch(self) -> bool:  # the model accepts a batch dimension > 1 (the server batches)
        return self.manifest.input.batch

    @property
    def escalation_url(self) -> str | None:
        return self.manifest.escalation.url

    @property
    def escalation_timeout_s(self) -> float:
        return self.manifest.escalation.timeout_s

    @property
    def strip(self) -> bool:  # the contract's scoring strips whitespace at the ends: the text too
        return self.manifest.scoring.strip

    @property
    def feed(self) -> str:
        """tensor: the host preprocesses (`preprocess`); pixels: the model takes decoded uint8
        [H, W, C] pixels (C 1, 3 or 4) and preprocesses in the graph."""
        return self.manifest.input.feed

    @property
    def conformance(self) -> str | None:  # conformance.json: images, texts and outputs
        return self.manifest.conformance

    @property
    def root(self) -> Path:
        """The bundle's folder; BundleError for a bundle given as bytes."""
        if not isinstance(self.files, Folder):
            raise BundleError(f"{self.files.where}: this bundle was given as bytes, not a folder")
        return self.files.root

    @property
    def where(self) -> str:
        """How messages name the bundle: its folder, or what the app called its bytes."""
        return self.files.where

    def text_of(self, output: Any) -> str:
        """The text of one image's raw output, as the runtime reports it (greedy CTC, then
        the contract's strip)."""
        text = decode(output, self.charset, self.layout, self.blank, kind=self.kind).text  # type: ignore[arg-type]
        return text.strip() if self.strip else text


def find_bundle(path: str | Path) -> Path:
    """The bundle folder itself (bundles/low), or a folder holding it as `bundle/` (the older
    build/<class>/bundle layout)."""
    path = Path(path)
    for folder in (path, path / "bundle"):
        if (folder / MANIFEST).is_file():
            return folder
    raise BundleError(
        f"{path}: no {MANIFEST} here or in {path / 'bundle'}; build the bundle first "
        "(dvc repro bundle@<class>)"
    )


def inside(root: Path, name: str) -> Path:
    """`root/name`, refused unless `name` is a plain relative path that stays in `root`."""
    return Folder(root).resolve(name)


def files_of(source: Source) -> BundleFiles:
    return Folder(source) if isinstance(source, Path) else source


def read_verified(source: Source, manifest: BundleManifest, name: str) -> bytes:
    """A bundle file's bytes, refused unless their SHA-256 is the manifest's."""
    entry = manifest.files.get(name)
    if entry is None:
        raise BundleError(f"{name} is not listed in {MANIFEST} 'files'")
    data = files_of(source).read(name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise BundleError(
            f"{name}: SHA-256 {digest[:12]}… does not match the manifest's "
            f"{entry.sha256[:12]}… (corrupted or replaced file)"
        )
    return data


def verify_signature(files: BundleFiles, manifest_bytes: bytes, public_key: PublicKey) -> None:
    """Refuse the bundle unless manifest.sig is a valid Ed25519 signature of manifest.json by
    `public_key` (32 raw bytes, PEM bytes or text, or the path of a PEM file)."""
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError as e:
        raise BundleError(
            "signature checks need the 'cryptography' package: pip install "
            "'ocr-bundles-runtime[verify]' (or cryptography)"
        ) from e
    pem = _key_bytes(public_key)
    if len(pem) == 32 and not pem.startswith(b"-----"):
        key = Ed25519PublicKey.from_public_bytes(pem)
    else:
        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise BundleError(f"public key is neither 32 raw bytes nor a PEM key ({e})") from e
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError(f"public key is {type(key).__name__}, not Ed25519")
    if not files.has(SIGNATURE):
        raise BundleError(
            f"{files.where}: unsigned bundle (no {SIGNATURE}) but a signature is required"
        )
    try:
        key.verify(files.read(SIGNATURE), manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            f"{files.where}: {SIGNATURE} does not verify with the given public key (manifest "
            "changed, or signed by another key)"
        ) from None


def _key_bytes(value: PublicKey) -> bytes:
    """The key material: a Path (or a str that is not PEM text) names a PEM file."""
    if isinstance(value, str) and not value.lstrip().startswith("-----BEGIN"):
        value = Path(value)
    if isinstance(value, Path):
        try:
            return value.read_bytes()
        except OSError as e:
            raise BundleError(f"public key {value}: cannot read ({e.strerror})") from e
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise BundleError(f"public key: expected bytes, PEM text or a path, not {type(value).__name__}")


def parse_bundle(source: Source, public_key: PublicKey | None = None) -> BundleSpec:
    """Read and validate manifest.json (its signature first when a key is given), every path
    it names, and the hash-checked charset."""
    files = files_of(source)
    where = f"{files.where}/{MANIFEST}"
    if not files.has(MANIFEST):
        raise BundleError(f"{where}: missing; a bundle's files start with its {MANIFEST}")
    try:
        raw = files.read(MANIFEST)
    except BundleError as e:
        raise BundleError(f"{where}: unreadable ({e})") from e
    if public_key is not None:
        verify_signature(files, raw, public_key)
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{where}: not JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: not a JSON object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise BundleError(
            f"{files.where}: manifest format {manifest.get('format')!r} v{version} is not "
            f"{FORMAT!r} v{' or v'.join(map(str, READABLE_VERSIONS))}; rebuild the bundle "
            "with this version"
        )
    try:
        record = BundleManifest.from_dict(manifest)
    except ValueError as e:  # a missing or mistyped field, named by its path
        raise BundleError(f"{where}: invalid ({e})") from e
    return _spec(files, record)


def _spec(files: BundleFiles, manifest: BundleManifest) -> BundleSpec:
    where = f"{files.where}/{MANIFEST}"
    for name in manifest.files:
        files.check(name)
    models = {role: _model(files, manifest, role) for role in ROLES if manifest.models.get(role)}
    if "primary" not in models:
        raise BundleError(f"{where}: models.primary is missing")
    charset = json.loads(read_verified(files, manifest, manifest.charset))
    _check_output(where, manifest.output.blank, charset, manifest.confidence_threshold)
    if manifest.conformance is not None and manifest.conformance not in manifest.files:
        raise BundleError(f"{where}: conformance {manifest.conformance!r} not in files")
    return BundleSpec(files=files, manifest=manifest, charset=charset, models=models)


def _check_output(where: str, blank: int, charset: Any, threshold: float) -> None:
    """The CTC contract must fit the charset (layout and kind are checked by the record), so a
    bad manifest fails here, not on the first image."""
    if not isinstance(charset, list) or not all(isinstance(c, str) for c in charset):
        raise BundleError(f"{where}: charset.json is not a list of strings")
    if not 0 <= blank < len(charset):
        raise BundleError(f"{where}: output blank {blank} is outside the charset")
    if not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise BundleError(f"{where}: confidence_threshold {threshold} is outside [0, 1]")


def _model(files: BundleFiles, manifest: BundleManifest, role: str) -> ModelEntry:
    entry: ModelFiles = manifest.models[role]
    names = {fmt: name for fmt, name in entry.files.items() if name}
    for name in names.values():
        files.check(name)
        if name not in manifest.files:
            raise BundleError(f"models.{role}: {name!r} is not listed in {MANIFEST} 'files'")
    return ModelEntry(role, names, entry.optional)


def sizes_mb(root: Path, manifest: dict[str, Any]) -> dict[str, float]:
    """MB an app ships (manifest.json included) and MB it may leave out (the fallback), from
    the manifest document as the bundle stage wrote it."""

    def total(names: list[str]) -> float:
        return round(sum(inside(root, n).stat().st_size for n in names) / 1e6, 3)

    return {"ships_mb": total(manifest["ships"]), "optional_mb": total(manifest["optional"])}
