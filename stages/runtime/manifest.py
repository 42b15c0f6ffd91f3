"""Reading a bundle folder an app may have received over the network: manifest.json, its
hashes, the paths it names (never outside the folder) and an optional Ed25519 signature.

Standard library only, plus `cryptography` when (and only when) the app asks for signatures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .decode import decode
from .errors import BundleError
from .manifest_record import FORMAT, READABLE_VERSIONS, BundleManifest, ModelFiles
from .preprocess import Preprocess
from .session import Runtime

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # raw 64-byte Ed25519 signature of manifest.json's exact bytes
ROLES = ("primary", "fallback")

PublicKey = bytes | str | Path


@dataclass(frozen=True)
class ModelEntry:
    """One model of the bundle: its file per format and whether an app must ship it."""

    role: str
    files: dict[str, str]  # format ("ort" | "onnx") -> file name
    optional: bool  # the fallback: an app may leave it out; the runtime then never retries


@dataclass(frozen=True)
class BundleSpec:
    """The parsed manifest: what the runtime needs besides the model sessions."""

    root: Path
    manifest: BundleManifest
    preprocess: Preprocess
    runtime: Runtime
    charset: list[str]
    layout: str
    blank: int
    kind: str  # logits | probabilities
    threshold: float
    models: dict[str, ModelEntry]
    batch: bool  # the model accepts a batch dimension > 1 (the server batches then)
    escalation_url: str | None
    escalation_timeout_s: float
    strip: bool = False  # the contract's scoring strips whitespace at the ends: so does the text
    # tensor: the host preprocesses (`preprocess`); pixels: the model takes decoded uint8
    # [H, W, C] pixels (C 1, 3 or 4) and preprocesses in the graph
    feed: str = "tensor"
    conformance: str | None = None  # conformance.json: images, expected texts and outputs

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
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or "\\" in name or ".." in pure.parts:
        raise BundleError(
            f"{root / MANIFEST}: path {name!r} leaves the bundle folder; a manifest may only "
            "name files inside it"
        )
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):  # a symlink pointing out of the folder
        raise BundleError(f"{root / MANIFEST}: {name!r} resolves outside the bundle folder")
    return target


def read_verified(root: Path, manifest: BundleManifest, name: str) -> bytes:
    """A bundle file's bytes, refused unless their SHA-256 is the manifest's."""
    entry = manifest.files.get(name)
    if entry is None:
        raise BundleError(f"{name} is not listed in {MANIFEST} 'files'")
    path = inside(root, name)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{name}: cannot read ({e.strerror})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise BundleError(
            f"{name}: SHA-256 {digest[:12]}… does not match the manifest's "
            f"{entry.sha256[:12]}… (corrupted or replaced file)"
        )
    return data


def verify_signature(root: Path, manifest_bytes: bytes, public_key: PublicKey) -> None:
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
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(f"{root}: unsigned bundle (no {SIGNATURE}) but a signature is required")
    try:
        key.verify(sig_path.read_bytes(), manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            f"{root}: {SIGNATURE} does not verify with the given public key (manifest changed, "
            "or signed by another key)"
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


def parse_bundle(root: Path, public_key: PublicKey | None = None) -> BundleSpec:
    """Read and validate manifest.json (its signature first when a key is given), every path
    it names, and the hash-checked charset."""
    try:
        raw = (root / MANIFEST).read_bytes()
    except OSError as e:
        raise BundleError(f"{root / MANIFEST}: unreadable ({e.strerror})") from e
    if public_key is not None:
        verify_signature(root, raw, public_key)
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{root / MANIFEST}: not JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{root / MANIFEST}: not a JSON object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise BundleError(
            f"{root}: manifest format {manifest.get('format')!r} v{version} is not {FORMAT!r} "
            f"v{' or v'.join(map(str, READABLE_VERSIONS))}; rebuild the bundle with this version"
        )
    try:
        record = BundleManifest.from_dict(manifest)
    except ValueError as e:  # a missing or mistyped field, named by its path
        raise BundleError(f"{root / MANIFEST}: invalid ({e})") from e
    return _spec(root, record)


def _spec(root: Path, manifest: BundleManifest) -> BundleSpec:
    for name in manifest.files:
        inside(root, name)
    models = {role: _model(root, manifest, role) for role in ROLES if manifest.models.get(role)}
    if "primary" not in models:
        raise BundleError(f"{root / MANIFEST}: models.primary is missing")
    charset = json.loads(read_verified(root, manifest, manifest.charset))
    out = manifest.output
    _check_output(root, out.blank, charset, manifest.confidence_threshold)
    if manifest.conformance is not None and manifest.conformance not in manifest.files:
        raise BundleError(f"{root / MANIFEST}: conformance {manifest.conformance!r} not in files")
    return BundleSpec(
        root=root,
        manifest=manifest,
        preprocess=manifest.preprocess,
        runtime=manifest.runtime,
        charset=charset,
        layout=out.layout,
        blank=out.blank,
        kind=out.kind,
        threshold=manifest.confidence_threshold,
        models=models,
        batch=manifest.input.batch,
        escalation_url=manifest.escalation.url,
        escalation_timeout_s=manifest.escalation.timeout_s,
        strip=manifest.scoring.strip,
        feed=manifest.input.feed,
        conformance=manifest.conformance,
    )


def _check_output(root: Path, blank: int, charset: Any, threshold: float) -> None:
    """The CTC contract must fit the charset (layout and kind are checked by the record), so a
    bad manifest fails here, not on the first image."""
    where = root / MANIFEST
    if not isinstance(charset, list) or not all(isinstance(c, str) for c in charset):
        raise BundleError(f"{where}: charset.json is not a list of strings")
    if not 0 <= blank < len(charset):
        raise BundleError(f"{where}: output blank {blank} is outside the charset")
    if not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise BundleError(f"{where}: confidence_threshold {threshold} is outside [0, 1]")


def _model(root: Path, manifest: BundleManifest, role: str) -> ModelEntry:
    entry: ModelFiles = manifest.models[role]
    files = {fmt: name for fmt, name in entry.files.items() if name}
    for name in files.values():
        inside(root, name)
        if name not in manifest.files:
            raise BundleError(f"models.{role}: {name!r} is not listed in {MANIFEST} 'files'")
    return ModelEntry(role, files, entry.optional)


def sizes_mb(root: Path, manifest: dict[str, Any]) -> dict[str, float]:
    """MB an app ships (manifest.json included) and MB it may leave out (the fallback), from
    the manifest document as the bundle stage wrote it."""

    def total(names: list[str]) -> float:
        return round(sum(inside(root, n).stat().st_size for n in names) / 1e6, 3)

    return {"ships_mb": total(manifest["ships"]), "optional_mb": total(manifest["optional"])}
