"""manifest.json as one typed record: the bundle stage writes it, every runtime reads it, and
runtime/manifest.schema.json (JSON Schema, `python -m stages manifest-schema`) is generated
from it, so an app developer can implement a reader without reading Python.

Standard library only: `BundleManifest.from_dict` checks every field's type itself (the
runtime installs without pydantic).
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Literal

from .preprocess import Preprocess
from .session import Runtime

FORMAT = "ocr-ctc-bundle"
# 3: input.feed (pixels | tensor) and conformance vectors; 4: input.shape names the dims
# `preprocess` fixes ("channels", "height") instead of repeating their numbers
FORMAT_VERSION = 4
# a v3 bundle is a v4 one with numbers in input.shape; a v2 one feeds a tensor, has no vectors
READABLE_VERSIONS = (2, 3, 4)
Dim = int | Literal["batch", "channels", "height", "width"]


@dataclass(frozen=True)
class FileEntry:
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)
    sha256: str  # hex SHA-256 of the file's bytes: the runtime refuses a file that differs
    bytes: int


@dataclass(frozen=True)
class InputSpec:
    """What the model takes. tensor: [N, C, H, W] float made by `preprocess` on the host;
    pixels: decoded uint8 [H, W, C] (C 1 gray, 3 RGB, 4 RGBA straight alpha) that the graph
    resizes, converts and normalizes as `preprocess` says. A dim named "channels" or "height"
    is `preprocess`'s (the manifest states each number once), "width" follows the image and
    "batch" is any size (`batch` true)."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)

    name: str
    shape: list[Dim]  # tensor: ["batch" | 1, "channels", "height", "width"]
    dtype: Literal["float32", "float16", "uint8"]
    feed: Literal["tensor", "pixels"] = "tensor"
    batch: bool = False  # tensor feed only: the model reads a batch > 1 item for item
    min_width: int | None = None  # tensor feed: the narrowest tensor the model accepts
    channels: list[int] | None = None  # pixels feed: the C values the graph accepts
    max_pixels: int | None = None  # pixels feed: refuse larger images before running


@dataclass(frozen=True)
class OutputSpec:
    """The CTC output: greedy decoding takes the argmax per step, collapses repeats, drops
    `blank`; classes index charset.json."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)

    name: str
    classes: int
    layout: Literal["TBC", "BTC"]
    blank: int
    kind: Literal["logits", "probabilities"] = "logits"


@dataclass(frozen=True)
class ScoringSpec:
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)
    strip: bool = False  # the text is trimmed of whitespace at both ends
    casefold: bool = False  # labels compare case-insensitively (the text is not changed)


@dataclass(frozen=True)
class EscalationSpec:
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)
    url: str | None  # where unsure images go (the recognition server), or null: none
    timeout_s: float = 2.0  # the whole exchange's deadline


@dataclass(frozen=True)
class ModelFiles:
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)
    files: dict[str, str]  # format ("ort" | "onnx") -> file name
    optional: bool  # an app may leave it out (the fallback)
    origin: str | None = None  # fallback only: where it came from in the build
    float: bool | None = None
    pruned_here: bool | None = None


@dataclass(frozen=True)
class BundleManifest:
    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic (the schema)
    format: str
    format_version: int
    target: str  # the device class
    formats: list[Literal["ort", "onnx"]]  # the first is what a runtime loads by default
    input: InputSpec
    output: OutputSpec
    preprocess: Preprocess  # the contract's preprocessing (done in the graph for pixels feed)
    runtime: Runtime  # onnxruntime session settings the figures were measured with
    scoring: ScoringSpec
    confidence_threshold: float  # below it: the fallback, then the server
    escalation: EscalationSpec
    charset: str  # file: JSON list of strings, one per class
    models: dict[str, ModelFiles]  # "primary" (required) and "fallback" (optional)
    ships: list[str]  # files an app must ship (manifest.json included)
    optional: list[str]  # files it may leave out
    files: dict[str, FileEntry]  # every file but manifest.json and manifest.sig
    source: dict[str, Any]  # provenance of the source model
    recipe_sha256: str
    versions: dict[str, str]  # library versions the bundle was built with
    conformance: str | None = None  # file: conformance.json (runtime/conformance.py)
    metrics: dict[str, Any] | None = None  # accuracy per set as the build measured it

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; an optional field left at None is omitted (readers take the default)."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> BundleManifest:
        """The record, or ValueError naming the first field that is missing or mistyped."""
        return _build(cls, data, "manifest")


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            if not (getattr(value, f.name) is None and f.default is None)
        }
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    extra = sorted(set(data) - names)
    if extra:  # a typo or a newer format: silently ignoring it would run the bundle wrongly
        raise ValueError(f"{where}: unknown field(s) {extra}")
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{where}.{f.name}: missing")
            continue
        values[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
    if cls is Runtime:
        return Runtime.from_dict(values)
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _value(arm, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} is not {hint}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null")
        return None
    if is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _value(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    ok = (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        if hint is not float
        else isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not ok:
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "BundleManifest",
    "EscalationSpec",
    "FileEntry",
    "InputSpec",
    "ModelFiles",
    "OutputSpec",
    "ScoringSpec",
]
