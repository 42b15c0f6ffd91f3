"""Choosing a bundle's conformance vectors (format: runtime/ocr_bundles_runtime/conformance.py).

Vectors come from the validation split of the sources the build decided on, never from the
evaluation sets. Images the bundle reads right, whose every step leads the runner-up by well
above the tolerance, come first, so a correct port on another CPU cannot flip them.
The tolerance is measured, not guessed. Two distances on the chosen images count:
  - the shipped model's outputs against those of the float model it was quantized from (every
    correct int8 kernel approximates that model), doubled;
  - the outputs of the class's CPU profiles (its declared devices, run under QEMU where this
    machine is not one: the same numbers on every x86 build machine) against the expected
    ones, times PROFILE_HEADROOM for CPUs of those families the build did not run. Static int8
    on ARM requantizes its own way: on ddddocr's low model it sat 7.9 from the x86 values,
    far beyond the float gap, while reading the same texts.
The larger one, rounded up to 0.01 and never below FLOOR (float kernels agree to ~1e-5), is
the bundle's tolerance. An image some profile reads differently is never a vector: a correct
port on that device would fail it.
The images are saved as PNG in three pixel formats (RGB, gray, RGBA with partial alpha), so a
port's decoding and channel handling are checked too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ocr_bundles_runtime.conformance import Conformance, Steps, Vector, steps_of
from ocr_bundles_runtime.decode import to_time_major

from .scoring import Scoring

FLOOR = 0.01
PROFILE_HEADROOM = 1.5
SHORTLIST = 2  # candidates per vector run on the profiles (one emulator start per profile)
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
    profile_gap: float = 0.0  # largest |profile - expected| step value over the profiles


# candidates -> per candidate, the largest |profile - expected| step value over the class's
# profiles, or None where a profile reads another text (stages/bundle.py runs them)
Agree = Callable[[list[Candidate]], list[float | None]]


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
    agree: Agree | None = None,
) -> list[Candidate]:
    """`count` images shared out over the sources, each source's best ranked first, taking
    the pixel formats in turn (image i of a source is encoded as MODES[i % 3]); with `agree`,
    only images every profile reads as this machine does, with their profile gaps."""
    per_source = math.ceil(count / max(1, len(sources)))
    pools = []
    for items in sources.values():
        pool = [
            (i % len(MODES), candidate(as_png(path, MODES[i % len(MODES)]), label, shipped,
                                       reference, layout))
            for i, (path, label) in enumerate(items[:SCAN])
        ]  # fmt: skip
        pool.sort(key=lambda mc: rank(mc[1], scoring), reverse=True)  # stable: scan order
        pools.append(pool)
    if agree is not None:
        pools = agreed(pools, SHORTLIST * per_source, agree)
    chosen: list[Candidate] = []
    for k, pool in enumerate(pools):
        for j in range(min(per_source, count - len(chosen), len(pool))):
            mode = (j + k) % len(MODES)
            pick = next((mc for mc in pool if mc[0] == mode), pool[0])
            pool.remove(pick)
            chosen.append(pick[1])
    return chosen


def agreed(
    pools: list[list[tuple[int, Candidate]]], keep: int, agree: Agree
) -> list[list[tuple[int, Candidate]]]:
    """Each pool's first `keep` candidates that every profile reads alike, with their gaps;
    all pools' candidates go to `agree` in one call."""
    short = [pool[:keep] for pool in pools]
    gaps = iter(agree([c for pool in short for _, c in pool]))
    out = []
    for pool in short:
        marked = [(m, c, next(gaps)) for m, c in pool]
        out.append([(m, replace(c, profile_gap=g)) for m, c, g in marked if g is not None])
    return out


def tolerance(chosen: list[Candidate]) -> float:
    """The larger of twice the float gap and PROFILE_HEADROOM times the profile gap of the
    chosen images, rounded up to 0.01, at least FLOOR."""
    widest = max((max(2 * c.gap, PROFILE_HEADROOM * c.profile_gap) for c in chosen), default=0)
    return max(FLOOR, math.ceil(100 * widest) / 100)


def vectors(
    chosen: list[Candidate], measured: dict[str, float] | None = None
) -> tuple[Conformance, dict[str, bytes]]:
    """conformance.json's record and the PNG files it names; `measured`: each profile's
    largest gap on the chosen vectors."""
    files, items = {}, []
    for i, c in enumerate(chosen):
        name = f"conformance-{i:02d}.png"  # flat: app asset folders often are
        files[name] = c.png
        s = c.steps
        rounded = Steps(s.best, [round(v, DIGITS) for v in s.value],
                        [round(m, DIGITS) for m in s.margin])  # fmt: skip
        items.append(Vector(name, c.text, rounded.best, rounded.value, rounded.margin))
    return Conformance(tolerance(chosen), items, dict(measured or {})), files
