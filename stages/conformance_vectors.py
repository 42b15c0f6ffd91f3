"""Choosing a bundle's conformance vectors (format: stages/runtime/conformance.py).

Vectors come from the validation split of the sources the build decided on, never from the
evaluation sets. Images the bundle reads right, whose every step leads the runner-up by well
above the tolerance, come first, so a correct port on another CPU cannot flip them.
The tolerance is measured, not guessed: twice the largest distance, on the chosen images,
between the shipped model's outputs and those of the float model it was quantized from (every
correct int8 kernel approximates that model; x86 and ARM int8 sat within that distance in
verify), never below FLOOR (float kernels of different CPUs agree to about 1e-5).
The images are saved as PNG in three pixel formats (RGB, gray, RGBA with partial alpha), so a
port's decoding and channel handling are checked too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .runtime.conformance import Conformance, Steps, Vector, steps_of
from .runtime.decode import to_time_major
from .scoring import Scoring

FLOOR = 0.01
SCAN = 48  # validation images tried per source
DIGITS = 4  # values are written rounded: the build CPU's last bits are not part of the bundle
MODES = ("RGB", "L", "RGBA")

Reads = Callable[[bytes], tuple[str, np.ndarray]]  # PNG -> the runtime's text, raw output
Outputs = Callable[[bytes], np.ndarray]  # PNG -> the float model's raw output


@dataclass(frozen=True)
class Candidate:
    png: bytes
    label: str
    text: str  # what the runtime reads
    steps: Steps
    gap: float  # largest |shipped - float| at the shipped model's best classes


def as_png(path: Path, mode: str) -> bytes:
    """The image re-encoded losslessly in `mode`; RGBA gets an alpha ramp (composited on
    white by every runtime), so the vector checks a port's alpha handling."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if mode == "RGBA":
        w, h = rgb.size
        ramp = np.linspace(160, 255, w, dtype=np.float64).round().astype(np.uint8)
        alpha = Image.fromarray(np.tile(ramp, (h, 1)), "L")
        out = rgb.convert("RGBA")
        out.putalpha(alpha)
    else:
        out = rgb.convert(mode)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def candidate(png: bytes, label: str, shipped: Reads, reference: Outputs, layout: str) -> Candidate:
    text, out = shipped(png)
    steps = steps_of(out, layout)
    ref = to_time_major(reference(png), layout).astype(np.float64)
    at_best = ref[np.arange(len(steps.best)), steps.best]
    gap = float(np.abs(np.asarray(steps.value) - at_best).max()) if steps.best else 0.0
    return Candidate(png, label, text, steps, gap)


def rank(c: Candidate, scoring: Scoring) -> tuple[bool, bool, float]:
    """Best first: read right, every step's lead well above the tolerance, the widest lead.
    A model that reads nothing right (a test's tiny model) still gets its steadiest images."""
    lead = min(c.steps.margin, default=0.0) - 4 * max(c.gap, FLOOR)
    right = scoring.normalize(c.text) == scoring.normalize(c.label)
    return right, lead > 0, lead


def choose(
    sources: dict[str, list[tuple[Path, str]]],
    shipped: Reads,
    reference: Outputs,
    layout: str,
    scoring: Scoring,
    count: int,
) -> list[Candidate]:
    """`count` images shared out over the sources, each source's best ranked first, taking
    the pixel formats in turn (image i of a source is encoded as MODES[i % 3])."""
    per_source = math.ceil(count / max(1, len(sources)))
    chosen: list[Candidate] = []
    for k, items in enumerate(sources.values()):
        pool = [
            (i % len(MODES), candidate(as_png(path, MODES[i % len(MODES)]), label, shipped,
                                       reference, layout))
            for i, (path, label) in enumerate(items[:SCAN])
        ]  # fmt: skip
        pool.sort(key=lambda mc: rank(mc[1], scoring), reverse=True)  # stable: scan order
        for j in range(min(per_source, count - len(chosen), len(pool))):
            mode = (j + k) % len(MODES)
            pick = next((mc for mc in pool if mc[0] == mode), pool[0])
            pool.remove(pick)
            chosen.append(pick[1])
    return chosen


def tolerance(chosen: list[Candidate]) -> float:
    """Twice the largest float gap of the chosen images, rounded up to 0.01, at least FLOOR."""
    widest = max((c.gap for c in chosen), default=0.0)
    return max(FLOOR, math.ceil(200 * widest) / 100)


def vectors(chosen: list[Candidate]) -> tuple[Conformance, dict[str, bytes]]:
    """conformance.json's record and the PNG files it names."""
    files, items = {}, []
    for i, c in enumerate(chosen):
        name = f"conformance-{i:02d}.png"  # flat: app asset folders often are
        files[name] = c.png
        s = c.steps
        rounded = Steps(s.best, [round(v, DIGITS) for v in s.value],
                        [round(m, DIGITS) for m in s.margin])  # fmt: skip
        items.append(Vector(name, c.text, rounded.best, rounded.value, rounded.margin))
    return Conformance(tolerance(chosen), items), files
