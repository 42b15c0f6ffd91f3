"""The `clean` synthetic style: deterministic text captchas with light noise.

The `captcha` package draws with `secrets`, so it cannot be seeded; this module renders its
own captchas with Pillow, driven only by a `numpy.random.Generator`, and uses only fonts that
ship inside installed packages so the bytes do not depend on the host's system fonts.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from .dataset import png_bytes
from .style import Glyph, StyleBase, cut_glyph, draw_label, scaled, uniform_int

FontName = Literal["droid_sans_mono", "pillow_default"]
ColorScheme = Literal["random", "dark_on_light", "grayscale"]
RGB = tuple[int, int, int]

# Minimum horizontal cell of a glyph, as a fraction of its font size.
_MIN_CELL = 0.45


class CaptchaStyle(StyleBase):
    """How captcha images look; the defaults are calibrated against the stock ddddocr beta."""

    generator: Literal["clean"] = Field("clean", description="This style's generator.")
    fonts: list[FontName] = Field(
        default_factory=lambda: ["droid_sans_mono", "pillow_default"],
        min_length=1,
        description="Packaged fonts to pick from, one per character.",
    )
    font_size: tuple[int, int] = Field(
        (34, 40), description="Inclusive range of font sizes in pixels, per character."
    )
    rotation_deg: float = Field(
        12.0, ge=0.0, le=90.0, description="Largest absolute rotation of one character."
    )
    overlap: tuple[float, float] = Field(
        (0.0, 0.08),
        description="Range of the fraction of a glyph's width that overlaps its predecessor.",
    )
    vertical_jitter: float = Field(
        0.3, ge=0.0, le=1.0, description="Fraction of the free vertical space used for jitter."
    )
    noise_dots: int = Field(10, ge=0, description="Number of random dots drawn on top.")
    noise_curves: int = Field(2, ge=0, description="Number of random curves drawn on top.")
    curve_width: tuple[int, int] = Field(
        (1, 1), description="Inclusive range of noise curve stroke widths in pixels."
    )
    colors: ColorScheme = Field(
        "random",
        description="random: colored text on a tinted background; dark_on_light: dark text on "
        "near-white; grayscale: gray text on light gray.",
    )
    background_noise: bool = Field(
        True, description="Add faint per-pixel noise and a color gradient to the background."
    )

    @field_validator("font_size", "curve_width")
    @classmethod
    def _positive_int_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"need 1 <= low <= high, got {value}")
        return value

    @field_validator("overlap")
    @classmethod
    def _fraction_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] < 1.0:
            raise ValueError(f"need 0 <= low <= high < 1, got {value}")
        return value


# ---------------------------------------------------------------------------- rendering


@lru_cache(maxsize=256)
def _font(name: FontName, size: int) -> ImageFont.FreeTypeFont:
    if name == "droid_sans_mono":
        path = resources.files("captcha") / "data" / "DroidSansMono.ttf"
        return ImageFont.truetype(str(path), size)
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType: bitmap only
        raise RuntimeError("Pillow was built without FreeType; 'pillow_default' needs it")
    return font


def _color(rng: np.random.Generator, low: int, high: int, gray: bool) -> RGB:
    if gray:
        v = int(rng.integers(low, high + 1))
        return (v, v, v)
    r, g, b = (int(c) for c in rng.integers(low, high + 1, size=3))
    return (r, g, b)


def _palette(style: CaptchaStyle, rng: np.random.Generator) -> tuple[RGB, RGB]:
    """Background colors at the left and right edge (a gradient when they differ)."""
    if style.colors == "random":
        return _color(rng, 200, 255, False), _color(rng, 200, 255, False)
    if style.colors == "grayscale":
        return _color(rng, 205, 245, True), _color(rng, 205, 245, True)
    return (250, 250, 250), (250, 250, 250)


def _ink(style: CaptchaStyle, rng: np.random.Generator) -> RGB:
    if style.colors == "random":
        return _color(rng, 0, 150, False)
    if style.colors == "grayscale":
        return _color(rng, 0, 110, True)
    return _color(rng, 0, 70, False)


def _background(style: CaptchaStyle, rng: np.random.Generator) -> Image.Image:
    left, right = _palette(style, rng)
    t = np.linspace(0.0, 1.0, style.width)[None, :, None]
    img = np.broadcast_to(
        (1 - t) * np.array(left) + t * np.array(right), (style.height, style.width, 3)
    ).copy()
    if style.background_noise:
        noise = rng.normal(0.0, 6.0, size=(style.height, style.width, 1))
        img += noise if style.colors == "grayscale" else noise + rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _glyph(char: str, style: CaptchaStyle, rng: np.random.Generator) -> Glyph:
    size = uniform_int(rng, style.font_size)
    font = _font(style.fonts[int(rng.integers(len(style.fonts)))], size)
    angle = float(rng.uniform(-style.rotation_deg, style.rotation_deg))
    return cut_glyph(char, font, size, angle, _MIN_CELL)


def _layout(glyphs: list[Glyph], style: CaptchaStyle, rng: np.random.Generator) -> list[int]:
    """Horizontal offset of each glyph from the previous one; overlap pulls glyphs together."""
    overlaps = rng.uniform(style.overlap[0], style.overlap[1], size=len(glyphs))
    return [0] + [
        round(prev.mask.width - ov * cur.mask.width)
        for prev, cur, ov in zip(glyphs, glyphs[1:], overlaps[1:], strict=False)
    ]


def _fit(glyphs: list[Glyph], steps: list[int], style: CaptchaStyle) -> float:
    """Scale factor that makes the text run fit inside the image with a small margin."""
    run = sum(steps) + glyphs[-1].mask.width
    extent = max(g.dy + g.mask.height for g in glyphs) - min(g.dy for g in glyphs)
    margin = max(2, style.width // 32)
    return min(1.0, (style.width - 2 * margin) / run, (style.height - 4) / extent)


def _draw_text(img: Image.Image, text: str, style: CaptchaStyle, rng: np.random.Generator) -> None:
    glyphs = [_glyph(c, style, rng) for c in text]
    steps = _layout(glyphs, style, rng)
    scale = _fit(glyphs, steps, style)
    glyphs = [scaled(g, scale) for g in glyphs]
    steps = [round(s * scale) for s in steps]
    top = min(g.dy for g in glyphs)
    bottom = max(g.dy + g.mask.height for g in glyphs)
    center = (style.height - (bottom - top)) / 2 - top  # line center that centers the ink
    free = max(0.0, style.height - (bottom - top))
    x = (style.width - sum(steps) - glyphs[-1].mask.width) // 2 + int(rng.integers(-2, 3))
    for g, step in zip(glyphs, steps, strict=True):
        x += step
        jitter = rng.uniform(-0.5, 0.5) * free * style.vertical_jitter
        y = min(max(0, round(center + g.dy + jitter)), style.height - g.mask.height)
        box = (x, y, x + g.mask.width, y + g.mask.height)
        img.paste(_ink(style, rng), box, g.mask)


def _draw_curves(img: Image.Image, style: CaptchaStyle, rng: np.random.Generator) -> None:
    """Sine-ish strokes across the text, as in common web captchas."""
    draw = ImageDraw.Draw(img)
    for _ in range(style.noise_curves):
        x0 = rng.uniform(0, 0.3) * style.width
        x1 = rng.uniform(0.7, 1.0) * style.width
        xs = np.linspace(x0, x1, 48)
        amp = rng.uniform(0.05, 0.25) * style.height
        period = rng.uniform(0.5, 1.5) * style.width
        phase = rng.uniform(0, 2 * np.pi)
        mid = rng.uniform(0.3, 0.7) * style.height
        ys = mid + amp * np.sin(2 * np.pi * xs / period + phase)
        points = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        draw.line(points, fill=_ink(style, rng), width=uniform_int(rng, style.curve_width))


def _draw_dots(img: Image.Image, style: CaptchaStyle, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(img)
    for _ in range(style.noise_dots):
        x = float(rng.uniform(0, style.width))
        y = float(rng.uniform(0, style.height))
        r = float(rng.uniform(0.5, 1.5))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_ink(style, rng))


def render(text: str, style: CaptchaStyle, rng: np.random.Generator) -> Image.Image:
    """Draw `text` as an RGB captcha; all randomness comes from `rng`."""
    if not text:
        raise ValueError("cannot render an empty label")
    img = _background(style, rng)
    _draw_text(img, text, style, rng)
    _draw_curves(img, style, rng)
    _draw_dots(img, style, rng)
    return img


def sample(style: CaptchaStyle, seed: int, index: int) -> tuple[str, bytes]:
    """Sample `index` of the split seeded by `seed`; independent of the split size."""
    rng = np.random.default_rng([seed, index])
    label = draw_label(style, rng)
    return label, png_bytes(render(label, style, rng))


def style_fonts(style: CaptchaStyle) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """(name, loaded font) per style font, for glyph-coverage checks."""
    return [(name, _font(name, style.font_size[1])) for name in style.fonts]
