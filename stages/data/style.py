"""What every synthetic style shares: image size, label lengths and alphabet, how a label is
drawn, and how one rotated glyph is cut out. clean.py and hard.py add how the image looks.

All randomness comes from the caller's `numpy.random.Generator`, in the caller's order.
"""

from __future__ import annotations

from typing import NamedTuple, Self

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IntRange = tuple[int, int]


class StyleBase(BaseModel):
    """The fields every style has; a style subclasses this with its `generator` tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(160, ge=16, le=2048, description="Image width in pixels.")
    height: int = Field(60, ge=16, le=1024, description="Image height in pixels.")
    min_length: int = Field(4, ge=1, description="Shortest label, in characters.")
    max_length: int = Field(6, ge=1, description="Longest label, in characters.")
    alphabet: str | None = Field(
        None,
        min_length=1,
        description="Characters labels are drawn from (unique); null = the pipeline's charset "
        "(params.yaml: charset).",
    )

    @field_validator("alphabet")
    @classmethod
    def _unique_alphabet(cls, value: str | None) -> str | None:
        dupes = sorted({c for c in value or "" if value.count(c) > 1})
        if dupes:
            raise ValueError(f"alphabet has duplicate characters {dupes}")
        return value

    @model_validator(mode="after")
    def _length_range(self) -> Self:
        if self.min_length > self.max_length:
            raise ValueError(
                f"min_length ({self.min_length}) must be <= max_length ({self.max_length})"
            )
        return self


def uniform_int(rng: np.random.Generator, bounds: IntRange) -> int:
    """An integer in the inclusive range `bounds`."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def draw_label(style: StyleBase, rng: np.random.Generator) -> str:
    """A label of the style's length range over its alphabet (two draws from `rng`)."""
    if not style.alphabet:
        raise ValueError("style.alphabet is unset: resolve it from the charset first")
    length = uniform_int(rng, (style.min_length, style.max_length))
    return "".join(style.alphabet[i] for i in rng.integers(len(style.alphabet), size=length))


class Glyph(NamedTuple):
    mask: Image.Image  # 'L' coverage, cropped to the ink (widened to a minimum cell)
    dy: float  # top of the mask relative to the text line's vertical center


def cut_glyph(
    char: str, font: ImageFont.FreeTypeFont, size: int, angle: float, min_cell: float
) -> Glyph:
    """One character rotated by `angle`; `dy` keeps baselines aligned after cropping to the ink.
    Narrow glyphs (i, l, 1) are widened to `min_cell` x size so neighbours do not swallow them."""
    ascent, descent = font.getmetrics()
    pad = size // 2
    line = Image.new("L", (int(font.getlength(char)) + 2 * pad, ascent + descent + 2 * pad), 0)
    ImageDraw.Draw(line).text((pad, pad), char, fill=255, font=font)
    line = line.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    left, top, right, bottom = line.getbbox() or (0, 0, 1, 1)
    extra = max(0, round(size * min_cell) - (right - left))
    left, right = left - extra // 2, right + extra - extra // 2
    return Glyph(line.crop((left, top, right, bottom)), top - line.height / 2)


def scaled(g: Glyph, scale: float) -> Glyph:
    """The glyph shrunk by `scale` (never enlarged)."""
    if scale >= 1.0:
        return g
    w, h = g.mask.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return Glyph(g.mask.resize(size, Image.Resampling.BILINEAR), g.dy * scale)
