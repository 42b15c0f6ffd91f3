"""The deployable runtime: load a bundle (a folder, a mapping of file names to bytes, or a zip
archive's bytes), recognize captchas, degrade instead of failing.

Imports only numpy, onnxruntime, the standard library and this package (Pillow or OpenCV on
first use, as the manifest's preprocessing backend asks). No onnx, no pydantic: the bundle's
files are all it reads.

Fallback chain (each step is an event in `Recognizer.events` or `Result.events`, and logged):
  provider unavailable        -> the next provider of the manifest's list
  primary fails to load/hash  -> the fallback model (hash checked too; both fail -> BundleError)
  image undecodable           -> ImageError (stable code, retryable flag, advice)
  confidence < threshold      -> rerun with the fallback (loaded on first need), keep the more
                                 confident result
  still < threshold           -> the escalation server when a URL is set (status "server" when
                                 it answers "ok"; "server_unreachable" with the local best guess
                                 on timeout, refusal or 5xx); without a URL: "needs_server"
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .conformance import CheckReport, VectorResult, compare, read_vectors, steps_of, summarize
from .decode import Decoded, decode
from .errors import BundleError, ImageError
from .escalate import ServerAnswer, ask_server, check_url
from .files import Memory, from_zip
from .manifest import BundleSpec, PublicKey, find_bundle, parse_bundle, read_verified
from .preprocess import ImageInput, model_input
from .session import choose_providers, session_options

log = logging.getLogger(__name__)

Status = Literal["ok", "low_confidence_fallback", "needs_server", "server", "server_unreachable"]
Role = Literal["primary", "fallback", "server"]
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


@dataclass(frozen=True)
class Result:
    text: str
    confidence: float  # the weakest emitted character's probability (decode.Decoded)
    status: Status
    model: Role  # which model produced `text`
    timings_ms: dict[str, float]  # preprocess, infer, decode, server, total
    # only when asked for, and never for the server's text (it sends none)
    char_probs: tuple[float, ...] | None = None
    events: tuple[str, ...] = ()  # this call's fallback steps

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events"] = list(self.events)
        out["char_probs"] = None if self.char_probs is None else list(self.char_probs)
        return out


@dataclass(frozen=True)
class _Model:
    role: Role
    file: str
    session: ort.InferenceSession = field(repr=False)
    input_name: str
    output_name: str
    dtype: type
    data: bytes = field(repr=False)  # kept alive: .ort sessions may point into these bytes


@dataclass(frozen=True)
class Pass:
    """One model's run on one image: what `infer` returns and `finish` takes (a server that
    batches images runs `prepare`, then `infer` on the stacked tensors, then `finish` each)."""

    role: Role
    decoded: Decoded
    infer_s: float
    decode_s: float

    @property
    def confidence(self) -> float:
        return self.decoded.confidence or 0.0


class Recognizer:
    """One loaded bundle. Thread-safe: share one instance; per-call state stays local."""

    def __init__(
        self,
        spec: BundleSpec,
        providers: tuple[str, ...],
        model_format: str | None = None,
        escalation_url: str | None = None,
        escalation_timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self._format = model_format or spec.manifest.formats[0]
        self._events: list[str] = []
        self._events_lock = threading.Lock()
        self._fallback_lock = threading.Lock()  # the fallback session is created lazily, once
        self.escalation_url = _escalation_url(escalation_url, spec)
        self.escalation_timeout_s = _escalation_timeout(escalation_timeout_s, spec)
        self.providers = self._pick_providers(providers)
        primary = self._load("primary")
        self._fallback: _Model | None = None
        self._fallback_tried = primary is None
        if primary is None:
            self._fallback = self._load("fallback")
        active = primary or self._fallback
        if active is None:
            raise BundleError(f"{spec.where}: no model could be loaded: {'; '.join(self._events)}")
        self._active: _Model = active
        self._no_rerun = self._why_no_rerun(primary is None)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        providers: list[str] | tuple[str, ...] | None = None,
        model_format: str | None = None,
        public_key: PublicKey | None = None,
        escalation_url: str | None = None,
        escalation_timeout_s: float | None = None,
    ) -> Recognizer:
        """Load `path` (a bundle folder or its class folder).

        providers: overrides the manifest's list. model_format: "ort" or "onnx" (default: the
        first format the bundle ships). public_key: require manifest.sig to verify with this
        Ed25519 key (raw 32 bytes, PEM, or a PEM file path); None accepts unsigned bundles.
        escalation_url/timeout: where unsure images go (overrides the manifest)."""
        spec = parse_bundle(find_bundle(path), public_key)
        return cls._of(spec, providers, model_format, escalation_url, escalation_timeout_s)

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes],
        providers: list[str] | tuple[str, ...] | None = None,
        model_format: str | None = None,
        public_key: PublicKey | None = None,
        escalation_url: str | None = None,
        escalation_timeout_s: float | None = None,
        name: str = "<bundle in memory>",
    ) -> Recognizer:
        """Load a bundle from its files as bytes, keyed by the names manifest.json uses (e.g.
        read from app assets); the optional fallback may be left out. Options as from_bundle;
        `name` is how messages call this bundle."""
        spec = parse_bundle(Memory(files, name), public_key)
        return cls._of(spec, providers, model_format, escalation_url, escalation_timeout_s)

    @classmethod
    def from_bytes(
        cls,
        archive: bytes,
        providers: list[str] | tuple[str, ...] | None = None,
        model_format: str | None = None,
        public_key: PublicKey | None = None,
        escalation_url: str | None = None,
        escalation_timeout_s: float | None = None,
        name: str = "<zip archive>",
    ) -> Recognizer:
        """Load a bundle zipped into one file (its files at the top or inside one folder).
        Options as from_bundle."""
        spec = parse_bundle(from_zip(bytes(archive), name), public_key)
        return cls._of(spec, providers, model_format, escalation_url, escalation_timeout_s)

    @classmethod
    def _of(
        cls,
        spec: BundleSpec,
        providers: list[str] | tuple[str, ...] | None,
        model_format: str | None,
        escalation_url: str | None,
        escalation_timeout_s: float | None,
    ) -> Recognizer:
        formats = spec.manifest.formats
        if model_format is not None and model_format not in formats:
            raise BundleError(f"{spec.where}: ships {formats}, not {model_format!r}")
        return cls(
            spec,
            tuple(providers or spec.runtime.providers),
            model_format,
            escalation_url,
            escalation_timeout_s,
        )

    @property
    def events(self) -> list[str]:
        """Load-time fallback steps (providers skipped, models refused), oldest first."""
        with self._events_lock:
            return list(self._events)

    @property
    def model(self) -> Role:
        """The model every call starts with: 'fallback' only when the primary failed to load."""
        return self._active.role

    @property
    def model_file(self) -> str:
        """The bundle file every call starts with (model.ort, model.onnx or a fallback file)."""
        return self._active.file

    @property
    def fallback_loaded(self) -> bool:
        return self._fallback is not None

    def load_fallback(self) -> bool:
        """Load the fallback now (it is otherwise loaded on the first unsure image)."""
        return self._fallback_model() is not None

    def predict(
        self, image: ImageInput, return_probs: bool = False, source: str = "image"
    ) -> Result:
        """Recognize one image (bytes, path or HxW/HxWxC uint8 array); ImageError if unusable."""
        t0 = time.perf_counter()
        x = self.prepare(image, source)
        t1 = time.perf_counter()
        first = self._infer(self._active, x)
        return self.finish(image, x, first, t0, t1, return_probs)

    def prepare(self, image: ImageInput, source: str = "image") -> np.ndarray:
        """What the model takes: a [1, C, H, W] tensor preprocessed here, or the decoded uint8
        [H, W, C] pixels when the bundle's graph preprocesses (manifest input.feed)."""
        return model_input(image, self.spec.preprocess, self.spec.feed, source)

    def first_read(self, image: ImageInput, source: str = "image") -> tuple[str, np.ndarray]:
        """The text and undecoded output of the model every call starts with, without the
        fallback chain: what conformance vectors record and check."""
        out = self._run(self._active, self.prepare(image, source))
        return self.spec.text_of(out), out

    def check(self) -> CheckReport:
        """Run the bundle's conformance vectors through the model every call starts with (no
        fallback, no server): healthy only when every vector passes (conformance.py's rule)."""
        vectors = read_vectors(self.spec)
        if vectors is None:
            return CheckReport(False, 0.0, self.model_file, [], "the bundle has no vectors")
        results = [self._check_one(v, vectors.tolerance) for v in vectors.vectors]
        return summarize(results, vectors.tolerance, self.model_file)

    def _check_one(self, vector: Any, tolerance: float) -> VectorResult:
        data = read_verified(self.spec.files, self.spec.manifest, vector.image)
        try:
            text, out = self.first_read(data, vector.image)
        except ImageError as e:  # a vector the runtime cannot decode fails, with its reason
            return VectorResult(vector.image, False, "", vector.text, None, str(e))
        return compare(vector, text, steps_of(out, self.spec.layout), tolerance)

    def finish(
        self,
        image: ImageInput,
        x: np.ndarray,
        first: Pass,
        t0: float,
        t1: float,
        return_probs: bool = False,
    ) -> Result:
        """The Result of one image whose first pass is done: escalate when it is unsure."""
        events: list[str] = []
        passes = [first]
        status: Status = "ok"
        server_s = 0.0
        if first.confidence < self.spec.threshold:
            status = self._escalate(x, passes, events)
        best = max(passes, key=lambda p: p.confidence)  # ties keep the first (primary) pass
        text, confidence, role = best.decoded.text, best.confidence, best.role
        char_probs = tuple(best.decoded.char_probs or ()) if return_probs else None
        url = self.escalation_url  # read once: the server backend may clear it meanwhile
        if status == "needs_server" and url:
            ts = time.perf_counter()
            status, answer = self._ask_server(url, image, events)
            server_s = time.perf_counter() - ts
            if answer is not None:
                text, confidence, role = answer.text, answer.confidence, "server"
                char_probs = None  # the local per-character probabilities describe local text
        return Result(
            text=text.strip() if self.spec.strip else text,
            confidence=confidence,
            status=status,
            model=role,
            timings_ms={
                "preprocess": _ms(t1 - t0),
                "infer": _ms(sum(p.infer_s for p in passes)),
                "decode": _ms(sum(p.decode_s for p in passes)),
                "server": _ms(server_s),
                "total": _ms(time.perf_counter() - t0),
            },
            char_probs=char_probs,
            events=tuple(events),
        )

    def predict_batch(self, images: list[ImageInput], return_probs: bool = False) -> list[Result]:
        """One Result per image, in order; an ImageError names the item (`images[i]` or path)."""
        return [
            self.predict(image, return_probs, source=f"images[{i}]")
            for i, image in enumerate(images)
        ]

    def infer(self, x: np.ndarray) -> list[Pass]:
        """The active model on a [N, C, H, W] batch (N > 1 only when the bundle allows it)."""
        return self._infer_many(self._active, x)

    def _escalate(self, x: np.ndarray, passes: list[Pass], events: list[str]) -> Status:
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

    def _ask_server(
        self, url: str, image: ImageInput, events: list[str]
    ) -> tuple[Status, ServerAnswer | None]:
        try:
            data = image_bytes(image)
        except OSError as e:  # the file went away after it was recognized locally
            _note(events, f"server: not asked, cannot read the image again ({e.strerror})")
            return "needs_server", None
        answer = ask_server(url, data, self.escalation_timeout_s)
        _note(events, f"server: {answer.reason}")
        if answer.ok:
            return "server", answer
        return ("needs_server" if answer.reachable else "server_unreachable"), None

    def _infer(self, model: _Model, x: np.ndarray) -> Pass:
        return self._infer_many(model, x)[0]

    def _run(self, model: _Model, x: np.ndarray) -> np.ndarray:
        feed = {model.input_name: x.astype(model.dtype, copy=False)}
        out = model.session.run([model.output_name], feed)[0]
        if out.ndim != 3 or out.shape[-1] != len(self.spec.charset):
            raise BundleError(
                f"{model.file}: outputs shape {list(out.shape)} but charset.json has "
                f"{len(self.spec.charset)} classes; the bundle's files do not belong together"
            )
        return out

    def _infer_many(self, model: _Model, x: np.ndarray) -> list[Pass]:
        t0 = time.perf_counter()
        out = self._run(model, x)
        t1 = time.perf_counter()
        s = self.spec
        items = 1 if s.feed == "pixels" else x.shape[0]  # pixels: one [H, W, C] image
        decoded = [
            decode(out, s.charset, s.layout, s.blank, True, s.kind, item)  # type: ignore[arg-type]
            for item in range(items)
        ]
        each = (time.perf_counter() - t1) / len(decoded)
        return [Pass(model.role, d, (t1 - t0) / len(decoded), each) for d in decoded]

    def _fallback_model(self) -> _Model | None:
        if self._fallback_tried:  # set only after _fallback, so no lock is needed to read
            return self._fallback
        with self._fallback_lock:
            if not self._fallback_tried:
                # a bundle without a fallback (or an app that left the optional file out) is
                # a choice, not a failure: nothing to load, nothing to report
                self._fallback = self._load("fallback") if self._fallback_shipped() else None
                self._fallback_tried = True
        return self._fallback

    def _fallback_shipped(self) -> bool:
        entry = self.spec.models.get("fallback")
        name = entry.files.get(self._format) if entry else None
        return name is not None and self.spec.files.has(name)

    def _why_no_rerun(self, primary_failed: bool) -> str | None:
        """Why an unsure image cannot be retried with another model, or None when it can."""
        if primary_failed:
            return "the primary did not load; the fallback already answered"
        fallback = self.spec.models.get("fallback")
        if fallback is None:
            return "the bundle has no fallback model"
        name = fallback.files.get(self._format)
        if name is None or not self.spec.files.has(name):
            return f"the optional fallback ({name or self._format}) is not shipped"
        files = self.spec.manifest.files
        if files[name].sha256 == files[self._file("primary")].sha256:
            return "fallback and primary are the same bytes"
        return None

    def _file(self, role: str) -> str:
        entry = self.spec.models.get(role)
        name = entry.files.get(self._format) if entry else None
        if not name:
            raise BundleError(f"the manifest lists no .{self._format} file for the {role} model")
        return name

    def _load(self, role: Role) -> _Model | None:
        """A session for `role`, or None with the reason recorded as an event."""
        try:
            name = self._file(role)
            data = read_verified(self.spec.files, self.spec.manifest, name)
            # initializers inside the .ort bytes need a buffer onnxruntime owns: it reads the
            # (just verified) file itself; from Python bytes it would keep a pointer into a
            # freed copy and crash. A bundle given as bytes has no file: initializers are
            # copied instead (more memory, same outputs)
            path = self.spec.files.path(name)
            direct = self._format == "ort" and self.spec.runtime.ort_bytes_for_initializers
            direct = direct and path is not None
            so = session_options(self.spec.runtime, ort_format=direct)
            source = str(path) if direct else data
            session = ort.InferenceSession(source, so, providers=self.providers)
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
        out = session.get_outputs()[0].name
        return _Model(role, name, session, inp.name, out, dtype, data)

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
            log.warning("%s: %s", self.spec.where, message)


def image_bytes(image: ImageInput) -> bytes:
    """The bytes to send to the server: the file's own bytes, or PNG for an array."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:  # Pillow has no mode for HxWx1
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _escalation_url(given: str | None, spec: BundleSpec) -> str | None:
    """The app's URL (ValueError if malformed), else the manifest's (BundleError)."""
    if given:
        return check_url(given)
    if not spec.escalation_url:
        return None
    try:
        return check_url(spec.escalation_url)
    except ValueError as e:
        raise BundleError(f"{spec.where}: manifest {e}") from None


def _escalation_timeout(given: float | None, spec: BundleSpec) -> float:
    """The app's timeout (ValueError if out of range), else the manifest's (BundleError)."""
    timeout = spec.escalation_timeout_s if given is None else float(given)
    if not 0 < timeout <= 600:  # NaN fails too
        message = f"escalation timeout must be in (0, 600] seconds, got {timeout}"
        if given is None:
            raise BundleError(f"{spec.where}: manifest {message}")
        raise ValueError(message)
    return timeout


def _note(events: list[str], message: str) -> None:
    events.append(message)
    log.info(message)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)
