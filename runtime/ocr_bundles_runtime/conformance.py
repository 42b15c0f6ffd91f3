"""Conformance vectors: a few images inside the bundle with the texts and per-step outputs the
build machine's runtime produced, so every port (another language, another CPU, another
onnxruntime) can check itself before it reports the bundle healthy.

conformance.json = {"tolerance": t, "vectors": [{"image", "text", "best", "value", "margin"}],
                    "measured": {profile: largest value difference the build saw there}}
per time step: `best` the argmax class, `value` the raw output there (logit or probability, as
the output's kind says), `margin` value minus the second-best class's. A run passes a vector when
  - its text equals `text`,
  - it has as many steps,
  - every step's value at its best class is within t of `value`,
  - its best class equals `best` at every step whose margin exceeds 2t (below that, legitimate
    kernel differences may swap two near-equal classes).
The vector images are PNG, which every decoder reads to the same pixels. The same rule is
implemented by the JavaScript client (clients/js/src/recognizer.mjs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .decode import to_time_major
from .manifest import BundleSpec, read_verified

FILE = "conformance.json"


@dataclass(frozen=True)
class Steps:
    best: list[int]
    value: list[float]
    margin: list[float]


def steps_of(output: np.ndarray, layout: str, digits: int | None = None) -> Steps:
    """Per-step best class, its value and its lead over the runner-up, for batch item 0;
    `digits` rounds the values (a build writes them rounded, so CPUs' last bits do not show)."""
    steps = to_time_major(output, layout).astype(np.float64)
    best = steps.argmax(axis=-1)
    top2 = np.sort(steps, axis=-1)[:, -2:] if steps.shape[-1] > 1 else np.repeat(steps, 2, -1)
    value, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
    if digits is not None:
        value, margin = np.round(value, digits), np.round(margin, digits)
    return Steps(best.tolist(), value.tolist(), margin.tolist())


@dataclass(frozen=True)
class Vector:
    image: str  # a PNG file of the bundle (conformance-NN.png)
    text: str
    best: list[int]
    value: list[float]
    margin: list[float]


@dataclass(frozen=True)
class Conformance:
    """conformance.json, written by the bundle stage and read by every runtime."""

    tolerance: float
    vectors: list[Vector] = field(default_factory=list)
    # CPU profile -> the largest step-value difference from `value` the build measured there
    # (the tolerance covers it); informative, no runtime needs it
    measured: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conformance:
        vectors = [Vector(**v) for v in data["vectors"]]
        tolerance = float(data["tolerance"])
        if not tolerance >= 0:  # NaN fails too
            raise ValueError(f"tolerance {data['tolerance']!r} is not a number >= 0")
        measured = {str(k): float(v) for k, v in data.get("measured", {}).items()}
        return cls(tolerance, vectors, measured)


@dataclass(frozen=True)
class VectorResult:
    image: str
    ok: bool
    text: str
    expected: str
    max_value_diff: float | None  # None when the step counts differ
    reason: str  # empty when ok


def compare(vector: Vector, text: str, got: Steps, tolerance: float) -> VectorResult:
    """The rule of the module docstring, with the first reason a vector fails."""
    diff = None
    reason = ""
    if len(got.best) != len(vector.best):
        reason = f"{len(got.best)} output steps, expected {len(vector.best)}"
    else:
        gaps = np.abs(np.asarray(got.value) - np.asarray(vector.value))
        diff = float(gaps.max()) if gaps.size else 0.0
        swapped = [
            t
            for t, (b, e, m) in enumerate(zip(got.best, vector.best, vector.margin, strict=True))
            if b != e and m > 2 * tolerance
        ]
        if text != vector.text:
            reason = f"read {text!r}, expected {vector.text!r}"
        elif diff > tolerance:
            reason = f"step {int(gaps.argmax())}: output differs by {diff:.4g} > {tolerance:g}"
        elif swapped:
            reason = f"step {swapped[0]}: best class {got.best[swapped[0]]}, expected " + str(
                vector.best[swapped[0]]
            )
    return VectorResult(vector.image, not reason, text, vector.text, diff, reason)


@dataclass(frozen=True)
class CheckReport:
    """A bundle's conformance on this runtime: healthy only when every vector passes."""

    ok: bool
    tolerance: float
    model_file: str
    vectors: list[VectorResult]
    reason: str = ""  # why there was nothing to check, or the first failure

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_value_diff(self) -> float | None:
        diffs = [v.max_value_diff for v in self.vectors if v.max_value_diff is not None]
        return max(diffs) if diffs else None


def read_vectors(spec: BundleSpec) -> Conformance | None:
    """The bundle's conformance.json (hash-checked), or None when it has none."""
    if spec.conformance is None:
        return None
    raw = read_verified(spec.files, spec.manifest, spec.conformance)
    return Conformance.from_dict(json.loads(raw))


def summarize(results: list[VectorResult], tolerance: float, model_file: str) -> CheckReport:
    """Healthy only when there are vectors and every one passes; the first failure says why."""
    failed = next((r for r in results if not r.ok), None)
    reason = f"{failed.image}: {failed.reason}" if failed else ""
    if not results:
        reason = "conformance.json lists no vectors"
    return CheckReport(bool(results) and failed is None, tolerance, model_file, results, reason)
