"""The deployable runtime: load a bundle folder, recognize captchas, degrade instead of failing.

Imports only numpy, onnxruntime, the standard library and the project's numpy-only helpers
(preprocess, decode, inference); stages.preprocess imports Pillow or OpenCV on first use, as the
manifest's backend asks. No onnx, no pydantic: the bundle folder is all it reads.

Fallback chain (each step is an event in `Recognizer.events` or `Result.events`, and logged):
  provider unavailable        -> the next provider of the manifest's list
  primary fails to load/hash  -> fallback.onnx (hash checked too; both fail -> BundleError)
  image undecodable           -> stages.preprocess.ImageError (stable code, retryable, advice)
  confidence < threshold      -> rerun with the float fallback, keep the more confident result
  still < threshold           -> status "needs_server" with the best guess
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .decode import Decoded, decode
from .errors import PipelineError
from .inference import Runtime, choose_providers, session_options
from .preprocess import ImageInput, Preprocess, preprocess

log = logging.getLogger(__name__)

FORMAT = "ocr-ctc-bundle"
FORMAT_VERSION = 1
Status = Literal["ok", "low_confidence_fallback", "needs_server"]
Role = Literal["primary", "fallback"]
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class BundleError(PipelineError):
    """The bundle folder is missing or malformed, or none of its models can be loaded."""


@dataclass(frozen=True)
class Result:
    text: str
    confidence: float  # the weakest emitted character's probability (decode.Decoded)
    status: Status
    model: Role  # which model produced `text`
    timings_ms: dict[str, float]  # preprocess, infer, decode, total
    char_probs: tuple[float, ...] | None = None  # only when asked for
    events: tuple[str, ...] = ()  # this call's fallback steps

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events"] = list(self.events)
        out["char_probs"] = None if self.char_probs is None else list(self.char_probs)
        return out


@dataclass(frozen=True)
class BundleSpec:
    """The parsed manifest: what the runtime needs besides the model sessions."""

    root: Path
    manifest: dict[str, Any]
    preprocess: Preprocess
    runtime: Runtime
    charset: list[str]
    layout: str
    blank: int
    threshold: float


@dataclass(frozen=True)
class _Model:
    role: Role
    file: str
    session: ort.InferenceSession = field(repr=False)
    input_name: str
    output_name: str
    dtype: type


@dataclass(frozen=True)
class _Pass:
    role: Role
    decoded: Decoded
    infer_s: float
    decode_s: float

    @property
    def confidence(self) -> float:
        return self.decoded.confidence or 0.0


def find_bundle(path: str | Path) -> Path:
    """The bundle folder itself, or a class folder (build/low) holding `bundle/`."""
    path = Path(path)
    for folder in (path, path / "bundle"):
        if (folder / "manifest.json").is_file():
            return folder
    raise BundleError(
        f"{path}: no manifest.json here or in {path / 'bundle'}; build the bundle first "
        "(dvc repro bundle@<class>)"
    )


def read_verified(root: Path, manifest: dict[str, Any], name: str) -> bytes:
    """A bundle file's bytes, refused unless their SHA-256 is the manifest's."""
    entry = manifest.get("files", {}).get(name)
    if entry is None:
        raise BundleError(f"{name} is not listed in manifest.json 'files'")
    try:
        data = (root / name).read_bytes()
    except OSError as e:
        raise BundleError(f"{name}: cannot read ({e.strerror})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise BundleError(
            f"{name}: SHA-256 {digest[:12]}… does not match the manifest's "
            f"{entry['sha256'][:12]}… (corrupted or replaced file)"
        )
    return data


def parse_bundle(root: Path) -> BundleSpec:
    """Read and validate manifest.json and the (hash-checked) charset."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{root / 'manifest.json'}: unreadable ({e})") from e
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{root}: manifest format {manifest.get('format')!r} v{manifest.get('format_version')}"
            f" is not {FORMAT!r} v{FORMAT_VERSION}; rebuild the bundle with this version"
        )
    try:
        charset = json.loads(read_verified(root, manifest, manifest["charset"]))
        rt = dict(manifest["runtime"], providers=tuple(manifest["runtime"]["providers"]))
        return BundleSpec(
            root=root,
            manifest=manifest,
            preprocess=Preprocess(**manifest["preprocess"]),
            runtime=Runtime(**rt),
            charset=charset,
            layout=manifest["ctc"]["layout"],
            blank=int(manifest["ctc"]["blank"]),
            threshold=float(manifest["confidence_threshold"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{root / 'manifest.json'}: invalid ({type(e).__name__}: {e})") from e


class Recognizer:
    """One loaded bundle. Thread-safe: share one instance; per-call state stays local."""

    def __init__(self, spec: BundleSpec, providers: tuple[str, ...], prefer_ort: bool) -> None:
        self.spec = spec
        self._kind = "ort" if prefer_ort else "onnx"
        self._events: list[str] = []
        self._events_lock = threading.Lock()
        self._fallback_lock = threading.Lock()  # the fallback session is created lazily, once
        self.providers = self._pick_providers(providers)
        primary = self._load("primary")
        self._fallback: _Model | None = None
        self._fallback_tried = primary is None
        if primary is None:
            self._fallback = self._load("fallback")
        active = primary or self._fallback
        if active is None:
            raise BundleError(
                f"{spec.root}: neither model could be loaded: {'; '.join(self._events)}"
            )
        self._active: _Model = active
        # why an unsure image cannot be retried with another model, or None when it can
        self._no_rerun: str | None = (
            "the primary did not load; the fallback already answered"
            if primary is None
            else "fallback and primary are the same bytes"
            if self._file_hash("fallback") == self._file_hash("primary")
            else None
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        providers: list[str] | tuple[str, ...] | None = None,
        prefer_ort: bool = False,
    ) -> Recognizer:
        """Load `path` (a bundle folder or its class folder). `providers` overrides the
        manifest's list; `prefer_ort` loads model.ort/fallback.ort instead of the .onnx files."""
        spec = parse_bundle(find_bundle(path))
        return cls(spec, tuple(providers or spec.runtime.providers), prefer_ort)

    @property
    def events(self) -> list[str]:
        """Load-time fallback steps (providers skipped, models refused), oldest first."""
        with self._events_lock:
            return list(self._events)

    @property
    def model(self) -> Role:
        """The model every call starts with: 'fallback' only when the primary failed to load."""
        return self._active.role

    def load_fallback(self) -> bool:
        """Load the fallback now (it is otherwise loaded on the first unsure image)."""
        return self._fallback_model() is not None

    def predict(
        self, image: ImageInput, return_probs: bool = False, source: str = "image"
    ) -> Result:
        """Recognize one image (bytes, path or HxW/HxWxC uint8 array); ImageError if unusable."""
        t0 = time.perf_counter()
        x = preprocess(image, self.spec.preprocess, source)
        t1 = time.perf_counter()
        events: list[str] = []
        passes = [self._infer(self._active, x)]
        status: Status = "ok"
        if passes[0].confidence < self.spec.threshold:
            status = self._escalate(x, passes, events)
        best = max(passes, key=lambda p: p.confidence)  # ties keep the first (primary) pass
        total = time.perf_counter() - t0
        return Result(
            text=best.decoded.text,
            confidence=best.confidence,
            status=status,
            model=best.role,
            timings_ms={
                "preprocess": _ms(t1 - t0),
                "infer": _ms(sum(p.infer_s for p in passes)),
                "decode": _ms(sum(p.decode_s for p in passes)),
                "total": _ms(total),
            },
            char_probs=tuple(best.decoded.char_probs or ()) if return_probs else None,
            events=tuple(events),
        )

    def predict_batch(self, images: list[ImageInput], return_probs: bool = False) -> list[Result]:
        """One Result per image, in order; an ImageError names the item (`images[i]` or path)."""
        return [
            self.predict(image, return_probs, source=f"images[{i}]")
            for i, image in enumerate(images)
        ]

    def _escalate(self, x: np.ndarray, passes: list[_Pass], events: list[str]) -> Status:
        """Append the fallback's pass when there is a distinct fallback; return the status."""
        threshold = self.spec.threshold
        first = passes[0]
        _note(events, f"low_confidence: {first.role} {first.confidence:.3f} < {threshold}")
        fallback = None if self._no_rerun else self._fallback_model()
        if fallback is None:
            _note(events, f"no_rerun: {self._no_rerun or 'the fallback did not load'}")
        else:
            passes.append(self._infer(fallback, x))
            _note(events, f"fallback_pass: fallback {passes[-1].confidence:.3f}")
        best = max(p.confidence for p in passes)
        if best >= threshold:
            return "low_confidence_fallback"
        _note(events, f"needs_server: best confidence {best:.3f} < {threshold}")
        return "needs_server"

    def _infer(self, model: _Model, x: np.ndarray) -> _Pass:
        feed = {model.input_name: x.astype(model.dtype, copy=False)}
        t0 = time.perf_counter()
        out = model.session.run([model.output_name], feed)[0]
        t1 = time.perf_counter()
        if out.ndim != 3 or out.shape[-1] != len(self.spec.charset):
            raise BundleError(
                f"{model.file}: outputs shape {list(out.shape)} but charset.json has "
                f"{len(self.spec.charset)} classes; the bundle's files do not belong together"
            )
        decoded = decode(out, self.spec.charset, self.spec.layout, self.spec.blank, True)
        return _Pass(model.role, decoded, t1 - t0, time.perf_counter() - t1)

    def _fallback_model(self) -> _Model | None:
        if self._fallback_tried:  # set only after _fallback, so no lock is needed to read
            return self._fallback
        with self._fallback_lock:
            if not self._fallback_tried:
                self._fallback = self._load("fallback")
                self._fallback_tried = True
        return self._fallback

    def _file(self, role: Role) -> str:
        name = self.spec.manifest["models"][role].get(self._kind)
        if not name:
            raise BundleError(f"the manifest lists no .{self._kind} file for the {role} model")
        return name

    def _file_hash(self, role: Role) -> str:
        # the .onnx bytes identify the model: .ort conversion orders operators differently per run
        name = self.spec.manifest["models"][role]["onnx"]
        return self.spec.manifest["files"].get(name, {}).get("sha256", "")

    def _load(self, role: Role) -> _Model | None:
        """A session for `role`, or None with the reason recorded as an event."""
        name = self._file(role)
        try:
            data = read_verified(self.spec.root, self.spec.manifest, name)
            so = session_options(self.spec.runtime)
            session = ort.InferenceSession(data, so, providers=self.providers)
            self._check_charset(session, name)
        except BundleError as e:
            self._event(f"{role}_failed: {e}")
            return None
        except Exception as e:  # onnxruntime raises its own pybind exception types
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self._event(f"{role}_failed: {name}: {type(e).__name__}: {first_line}")
            return None
        self._check_active_providers(session)
        inp = session.get_inputs()[0]
        dtype = _DTYPES.get(inp.type, np.float32)
        return _Model(role, name, session, inp.name, session.get_outputs()[0].name, dtype)

    def _check_charset(self, session: ort.InferenceSession, name: str) -> None:
        meta = session.get_modelmeta().custom_metadata_map.get("ocr.charset")
        if meta is not None and json.loads(meta) != self.spec.charset:
            raise BundleError(f"{name}: its ocr.charset metadata differs from charset.json")

    def _pick_providers(self, wanted: tuple[str, ...]) -> list[str]:
        use, skipped = choose_providers(wanted)  # logs each skip itself
        for p in skipped:
            self._event(f"provider_unavailable: {p}; using {use}", logged=True)
        return use

    def _check_active_providers(self, session: ort.InferenceSession) -> None:
        # onnxruntime may itself drop a provider that is built in but fails to initialize
        dropped = [p for p in self.providers if p not in session.get_providers()]
        if dropped:
            self._event(f"provider_inactive: {dropped}; running on {session.get_providers()}")

    def _event(self, message: str, logged: bool = False) -> None:
        with self._events_lock:
            self._events.append(message)
        if not logged:
            log.warning("%s: %s", self.spec.root, message)


def _note(events: list[str], message: str) -> None:
    events.append(message)
    log.info(message)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)
