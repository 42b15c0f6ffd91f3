"""The pass registry: `@register` a pure function under its name, `get(name)`, `names()`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from pydantic import BaseModel

from ocr_bundles_runtime.preprocess import Preprocess
from ocr_bundles_runtime.session import Runtime

from . import modelio
from .errors import UnknownNameError
from .scoring import Scoring

Kind = Literal["cleanup", "prune", "fuse", "quantize", "convert"]
PassFn = Callable[..., onnx.ModelProto]
NOTHING_TO_DO = "nothing_to_do"  # the report key of a pass that returned its input unchanged


@dataclass(frozen=True)
class PassSpec:
    """A registered pass: its function, options model and tags the pipeline reads."""

    name: str
    fn: PassFn
    options: type[BaseModel]
    kind: Kind
    # exact passes must keep outputs within the recipe's equivalence tolerance (on the classes
    # both models share); lossy ones (quantization, fp16) report their divergence instead.
    exact: bool
    # report fields that measure the build CPU's float kernels (a rounding that flips one int8
    # value moves them by about 1 %, differently on AVX2, VNNI or ARM): the build writes them
    # beside the model folder (checks.json), never into build.json, so equal decisions give a
    # byte-identical model folder on every build machine
    measured: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides its model and options; passes never touch files, and decide
    from these and their options only (never from timings), so a build is reproducible."""

    # preprocessed [1, C, H, W] float32 tensors (widths vary), every source's calib split
    # interleaved, so any prefix draws from every source
    calibration: list[np.ndarray] = field(default_factory=list)
    # per source: (tensor, label) pairs of its val split, never an evaluation image
    validation: dict[str, list[tuple[np.ndarray, str]]] = field(default_factory=dict)
    allowed_chars: str = ""  # the site's characters (params.yaml: charset)
    runtime: Runtime = field(default_factory=Runtime)  # the class's session settings
    input: Preprocess = field(default_factory=Preprocess)  # the class's input (height, channels)
    scoring: Scoring = field(default_factory=Scoring)  # how texts are compared with labels


_PASSES: dict[str, PassSpec] = {}


def register(
    name: str, options: type[BaseModel], kind: Kind, exact: bool, measured: tuple[str, ...] = ()
):
    """Decorator: register `fn(model, options, context) -> ModelProto` as pass `name`.

    The function must not mutate `model`. It raises PassError when it cannot do what its options
    ask (an unrecognized graph, an unreachable target), and returns `unchanged(model, name,
    reason)` when the model already is what the pass would make it, so a recipe fits every model
    and the build record still says the pass did nothing, and why."""

    def wrap(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass '{name}' registered twice")
        if fn.__name__ != name:
            raise ValueError(f"pass function '{fn.__name__}' must be named like its key '{name}'")
        _PASSES[name] = PassSpec(name, fn, options, kind, exact, measured)
        return fn

    return wrap


def unchanged(model: onnx.ModelProto, pass_name: str, reason: str) -> onnx.ModelProto:
    """A copy of `model` whose only change is metadata `report.<pass_name>` saying the pass had
    nothing to do and why; build.pop_reports moves it into the build record, leaving the input's
    bytes. The entry goes last (replacing any earlier one) so that popping restores the order."""
    key = f"report.{pass_name}"
    out = modelio.copy(model)
    kept = [p for p in out.metadata_props if p.key != key]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    out.metadata_props.add(key=key, value=json.dumps({NOTHING_TO_DO: reason}))
    return out


def get(name: str) -> PassSpec:
    try:
        return _PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, names()) from None


def names() -> list[str]:
    return sorted(_PASSES)
