"""The `hard` synthetic style: deterministic captchas that look like real web captchas.

Textured colored backgrounds, per-character colors, crossing lines and arcs, speckles,
per-character rotation, a smooth global warp, touching characters, several fonts and JPEG
re-compression. Like the clean style, all randomness comes from a `numpy.random.Generator`
and fonts come only from installed packages, so with the pinned library versions equal
(seed, index) give equal bytes whatever the host's system fonts.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from importlib import util
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from .dataset import png_bytes
from .style import Glyph, IntRange, StyleBase, cut_glyph, draw_label, scaled, uniform_int

FontName = Literal[
    "dejavu_sans",
    "dejavu_sans_bold",
    "dejavu_sans_oblique",
    "dejavu_serif",
    "dejavu_serif_bold",
    "dejavu_serif_italic",
    "dejavu_sans_mono",
    "dejavu_sans_mono_bold",
    "droid_sans_mono",
    "pillow_default",
]
RGB = tuple[int, int, int]
FloatRange = tuple[float, float]

# Font name -> (package that ships it, path inside the package); pillow_default is built in.
_FONT_FILES: dict[str, tuple[str, str]] = {
    "dejavu_sans": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans.ttf"),
    "dejavu_sans_bold": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans-Bold.ttf"),
    "dejavu_sans_oblique": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans-Oblique.ttf"),
    "dejavu_serif": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSerif.ttf"),
    "dejavu_serif_bold": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSerif-Bold.ttf"),
    "dejavu_serif_italic": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSerif-Italic.ttf"),
    "dejavu_sans_mono": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSansMono.ttf"),
    "dejavu_sans_mono_bold": ("matplotlib", "mpl-data/fonts/ttf/DejaVuSansMono-Bold.ttf"),
    "droid_sans_mono": ("captcha", "data/DroidSansMono.ttf"),
}
# Minimum horizontal cell of a glyph, as a fraction of its font size (keeps i, l, 1 visible).
_MIN_CELL = 0.4
# ITU-R 601-2 luma, the weights of Pillow's convert("L") that OCR front ends commonly use.
_LUMA = np.array([0.299, 0.587, 0.114])
# Independent random streams, so switching one feature off leaves the others unchanged.
_STREAMS = ("background", "text", "strokes", "warp", "dots")


class HardStyle(StyleBase):
    """How hard captchas look; the defaults are calibrated against the stock ddddocr beta.

    Stock `DdddOcr(beta=True)` reads 57.7 % of them exactly (clean style: 88.0 %; seed
    20261125, indices 0..299), while a person can still read them.
    """

    generator: Literal["hard"] = Field("hard", description="This style's generator.")
    fonts: list[FontName] = Field(
        default_factory=lambda: [
            "dejavu_sans",
            "dejavu_sans_bold",
            "dejavu_serif",
            "dejavu_serif_bold",
            "dejavu_sans_mono",
            "droid_sans_mono",
            "pillow_default",
        ],
        min_length=1,
        description="Packaged fonts to pick from, one per character.",
    )
    font_size: IntRange = Field(
        (32, 40), description="Inclusive range of font sizes in pixels, per character."
    )
    rotation_deg: float = Field(
        20.0, ge=0.0, le=90.0, description="Largest absolute rotation of one character; 0 = off."
    )
    spacing: FloatRange = Field(
        (-0.15, 0.05),
        description="Range of the gap between neighbouring glyphs as a fraction of the glyph "
        "width; negative values make characters touch or overlap; (0, 0) = off.",
    )
    vertical_jitter: float = Field(
        0.35, ge=0.0, le=1.0, description="Fraction of the free vertical space used for jitter."
    )
    background_level: IntRange = Field(
        (120, 255),
        description="Inclusive range of each background color channel; equal bounds give a "
        "fixed gray.",
    )
    background_gradient: int = Field(
        90,
        ge=0,
        le=255,
        description="Largest per-channel color change across the gradient; 0 = off.",
    )
    background_smooth_noise: float = Field(
        35.0, ge=0.0, le=255.0, description="Amplitude of smooth colored value noise; 0 = off."
    )
    background_stripes: float = Field(
        20.0, ge=0.0, le=255.0, description="Amplitude of soft sinusoidal stripes; 0 = off."
    )
    background_blobs: int = Field(3, ge=0, description="Number of soft colored blobs; 0 = off.")
    background_grain: float = Field(
        6.0, ge=0.0, le=64.0, description="Standard deviation of per-pixel grain; 0 = off."
    )
    color_per_char: bool = Field(
        True, description="Draw each character in its own color; false = one color per label."
    )
    min_contrast: float = Field(
        100.0,
        ge=0.0,
        le=127.0,
        description="Smallest luma difference (0-255) between a character's color and the mean "
        "background under it; 0 = any color.",
    )
    lines: int = Field(1, ge=0, description="Number of straight lines across the text; 0 = off.")
    arcs: int = Field(2, ge=0, description="Number of arcs across the text; 0 = off.")
    stroke_ink_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Fraction of lines and arcs drawn like text (a character's color, "
        "ink_stroke_width); the rest get random colors and stroke_width.",
    )
    ink_stroke_width: IntRange = Field(
        (2, 3), description="Inclusive range of widths of text-like lines and arcs in pixels."
    )
    stroke_width: IntRange = Field(
        (1, 2), description="Inclusive range of widths of the other lines and arcs in pixels."
    )
    dots: int = Field(60, ge=0, description="Number of speckles drawn on top; 0 = off.")
    dot_radius: FloatRange = Field((0.4, 1.2), description="Range of speckle radii in pixels.")
    warp_amplitude: float = Field(
        2.5,
        ge=0.0,
        le=32.0,
        description="Largest displacement of the smooth warp in pixels; 0 = off.",
    )
    warp_waves: int = Field(
        3, ge=1, le=16, description="Number of sinusoids summed per axis of the warp field."
    )
    warp_wavelength: FloatRange = Field(
        (30.0, 90.0), description="Range of the warp sinusoids' wavelengths in pixels."
    )
    jpeg_quality: IntRange | None = Field(
        (35, 75),
        description="Inclusive range of the JPEG re-compression quality; null or (0, 0) = off.",
    )

    @field_validator("font_size", "ink_stroke_width", "stroke_width", "background_level")
    @classmethod
    def _int_range(cls, value: IntRange, info: ValidationInfo) -> IntRange:
        low = 0 if info.field_name == "background_level" else 1
        if not low <= value[0] <= value[1] or value[1] > 255:
            raise ValueError(f"{info.field_name}: need {low} <= low <= high <= 255, got {value}")
        return value

    @field_validator("spacing")
    @classmethod
    def _spacing_range(cls, value: FloatRange, info: ValidationInfo) -> FloatRange:
        if not -0.6 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"{info.field_name}: need -0.6 <= low <= high <= 1, got {value}")
        return value

    @field_validator("dot_radius", "warp_wavelength")
    @classmethod
    def _positive_range(cls, value: FloatRange, info: ValidationInfo) -> FloatRange:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError(f"{info.field_name}: need 0 < low <= high, got {value}")
        return value

    @field_validator("jpeg_quality")
    @classmethod
    def _quality_range(cls, value: IntRange | None, info: ValidationInfo) -> IntRange | None:
        if value is None or value == (0, 0):
            return None
        if not 1 <= value[0] <= value[1] <= 95:
            raise ValueError(f"{info.field_name}: need 1 <= low <= high <= 95, got {value}")
        return value


# ---------------------------------------------------------------------------- fonts


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (matplotlib is slow)."""
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the hard captcha style needs the '{package}' package for its fonts")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=512)
def _font(name: FontName, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: raqm may or may not be installed, and it could shift glyphs.
    basic = ImageFont.Layout.BASIC
    if name == "pillow_default":
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType
            raise RuntimeError("Pillow was built without FreeType; 'pillow_default' needs it")
        return font.font_variant(layout_engine=basic)
    package, relative = _FONT_FILES[name]
    path = _package_dir(package) / relative
    if not path.is_file():
        raise RuntimeError(f"font {relative} is missing from the installed '{package}' package")
    return ImageFont.truetype(str(path), size, layout_engine=basic)


def style_fonts(style: HardStyle) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """(name, loaded font) per style font, for glyph-coverage checks."""
    return [(name, _font(name, style.font_size[1])) for name in style.fonts]


# ---------------------------------------------------------------------------- helpers


def _uniform(rng: np.random.Generator, bounds: FloatRange) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _rgb(values: np.ndarray) -> RGB:
    r, g, b = (int(v) for v in np.clip(np.rint(values), 0, 255))
    return (r, g, b)


def _luma(color: RGB | np.ndarray) -> float:
    return float(np.dot(np.asarray(color, dtype=float), _LUMA))


def _streams(rng: np.random.Generator) -> dict[str, np.random.Generator]:
    seeds = rng.integers(0, 2**63, size=len(_STREAMS))
    return {name: np.random.default_rng(int(s)) for name, s in zip(_STREAMS, seeds, strict=True)}


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only pixel coordinates (ys, xs) as floats, shared by every image of one size."""
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _table(func: Callable[[float], float], values: np.ndarray) -> np.ndarray:
    return np.array([func(v) for v in values.tolist()])


# numpy's vectorized sin/exp may pick a different SIMD kernel (and last bit) on another CPU;
# the planes below use 1-D libm tables combined with exact multiplies and adds instead.
def _sin_plane(height: int, width: int, kx: float, ky: float, phase: float) -> np.ndarray:
    """sin(kx * x + ky * y + phase) on the pixel grid, as sin(u + v) = su cv + cu sv."""
    u = kx * np.arange(width, dtype=float)
    v = ky * np.arange(height, dtype=float) + phase
    return np.outer(_table(math.cos, v), _table(math.sin, u)) + np.outer(
        _table(math.sin, v), _table(math.cos, u)
    )


def _gauss_plane(height: int, width: int, center: FloatRange, sigma: FloatRange) -> np.ndarray:
    """exp(-((x - cx)/sx)^2/2 - ((y - cy)/sy)^2/2), separable into two 1-D tables."""
    gx = ((np.arange(width) - center[0]) / sigma[0]) ** 2 / -2.0
    gy = ((np.arange(height) - center[1]) / sigma[1]) ** 2 / -2.0
    return np.outer(_table(math.exp, gy), _table(math.exp, gx))


# ---------------------------------------------------------------------------- background


def _gradient(style: HardStyle, rng: np.random.Generator) -> np.ndarray:
    """Base color plus a linear gradient in a random direction, (h, w, 3) floats."""
    lo, hi = style.background_level
    base = rng.integers(lo, hi + 1, size=3).astype(float)
    delta = rng.uniform(-1.0, 1.0, size=3) * style.background_gradient
    angle = rng.uniform(0.0, 2 * np.pi)
    ys, xs = _grid(style.height, style.width)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-9) - 0.5
    return base + t[..., None] * delta


def _smooth_noise(style: HardStyle, rng: np.random.Generator) -> np.ndarray:
    """Colored value noise: a coarse random grid upsampled bicubically."""
    cells = rng.uniform(-1.0, 1.0, size=(4, 8, 3))
    layers = [
        Image.fromarray(((cells[..., c] + 1) * 127.5).astype(np.uint8), "L").resize(
            (style.width, style.height), Image.Resampling.BICUBIC
        )
        for c in range(3)
    ]
    grid = np.stack([np.asarray(layer, dtype=float) for layer in layers], axis=-1)
    return (grid / 127.5 - 1.0) * style.background_smooth_noise


def _stripes(style: HardStyle, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, np.pi)
    k = 2 * np.pi / rng.uniform(6.0, 18.0)
    wave = _sin_plane(style.height, style.width, k * math.cos(angle), k * math.sin(angle), 0.0)
    tint = rng.uniform(0.3, 1.0, size=3) * rng.choice([-1.0, 1.0])
    return wave[..., None] * tint * style.background_stripes


def _blobs(style: HardStyle, rng: np.random.Generator) -> np.ndarray:
    """Soft Gaussian blobs of random color, added to the background."""
    out = np.zeros((style.height, style.width, 3))
    for _ in range(style.background_blobs):
        center = (rng.uniform(0, style.width), rng.uniform(0, style.height))
        sigma = (rng.uniform(0.08, 0.3) * style.width, rng.uniform(0.15, 0.5) * style.height)
        weight = _gauss_plane(style.height, style.width, center, sigma)
        out += weight[..., None] * rng.uniform(-60.0, 60.0, size=3)
    return out


def _background(style: HardStyle, rng: np.random.Generator) -> np.ndarray:
    """Textured background as (h, w, 3) floats in [0, 255]."""
    img = _gradient(style, rng)
    if style.background_smooth_noise:
        img += _smooth_noise(style, rng)
    if style.background_stripes:
        img += _stripes(style, rng)
    if style.background_blobs:
        img += _blobs(style, rng)
    if style.background_grain:
        img += rng.normal(0.0, style.background_grain, size=img.shape)
    return np.clip(img, 0.0, 255.0)


# ---------------------------------------------------------------------------- text


def _glyph(char: str, style: HardStyle, rng: np.random.Generator) -> Glyph:
    size = uniform_int(rng, style.font_size)
    font = _font(style.fonts[int(rng.integers(len(style.fonts)))], size)
    angle = _uniform(rng, (-style.rotation_deg, style.rotation_deg))
    return cut_glyph(char, font, size, angle, _MIN_CELL)


def _layout(glyphs: list[Glyph], style: HardStyle, rng: np.random.Generator) -> list[int]:
    """Offset of each glyph from the previous one; negative spacing makes them overlap."""
    gaps = rng.uniform(style.spacing[0], style.spacing[1], size=len(glyphs))
    return [0] + [
        max(1, round(prev.mask.width + gap * min(prev.mask.width, cur.mask.width)))
        for prev, cur, gap in zip(glyphs, glyphs[1:], gaps[1:], strict=False)
    ]


def _fit(glyphs: list[Glyph], steps: list[int], style: HardStyle) -> float:
    """Scale factor that makes the run fit, leaving room for the warp at the edges."""
    run = sum(steps) + glyphs[-1].mask.width
    extent = max(g.dy + g.mask.height for g in glyphs) - min(g.dy for g in glyphs)
    margin = max(2, style.width // 32) + style.warp_amplitude
    return min(1.0, (style.width - 2 * margin) / run, (style.height - 4) / extent)


def _ink(background: np.ndarray, style: HardStyle, rng: np.random.Generator) -> RGB:
    """A random color whose luma differs from the mean background luma by min_contrast."""
    bg = _luma(background.reshape(-1, 3).mean(axis=0))
    color = rng.uniform(0.0, 255.0, size=3)
    if abs(_luma(color) - bg) >= style.min_contrast:
        return _rgb(color)
    # Too close: move the color toward black or white, whichever side has room.
    target = bg - style.min_contrast if bg - style.min_contrast >= 0 else bg + style.min_contrast
    target = min(max(target, 0.0), 255.0)
    if target < bg:
        return _rgb(color * target / max(_luma(color), 1e-6))
    w = (target - _luma(color)) / max(255.0 - _luma(color), 1e-6)
    return _rgb(color + (255.0 - color) * min(max(w, 0.0), 1.0))


def _place(
    glyphs: list[Glyph], steps: list[int], style: HardStyle, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Top-left corner of each glyph: horizontally centered, with vertical jitter."""
    top = min(g.dy for g in glyphs)
    bottom = max(g.dy + g.mask.height for g in glyphs)
    center = (style.height - (bottom - top)) / 2 - top  # line center that centers the ink
    free = max(0.0, style.height - (bottom - top))
    x = (style.width - sum(steps) - glyphs[-1].mask.width) // 2 + int(rng.integers(-3, 4))
    corners: list[tuple[int, int]] = []
    for glyph, step in zip(glyphs, steps, strict=True):
        x += step
        jitter = rng.uniform(-0.5, 0.5) * free * style.vertical_jitter
        y = min(max(0, round(center + glyph.dy + jitter)), style.height - glyph.mask.height)
        corners.append((x, y))
    return corners


def _draw_text(
    img: Image.Image, background: np.ndarray, text: str, style: HardStyle, rng: np.random.Generator
) -> list[RGB]:
    """Paste the characters; returns their colors (lines reuse them to mimic text)."""
    glyphs = [_glyph(c, style, rng) for c in text]
    steps = _layout(glyphs, style, rng)
    scale = _fit(glyphs, steps, style)
    glyphs = [scaled(g, scale) for g in glyphs]
    steps = [round(s * scale) for s in steps]
    corners = _place(glyphs, steps, style, rng)
    colors: list[RGB] = []
    for glyph, (x, y) in zip(glyphs, corners, strict=True):
        w, h = glyph.mask.size
        if style.color_per_char or not colors:
            under = background[max(0, y) : y + h, max(0, x) : x + w]
            colors.append(_ink(under if under.size else background, style, rng))
        else:  # one color per label: the first character's
            colors.append(colors[0])
        img.paste(colors[-1], (x, y, x + w, y + h), glyph.mask)
    return colors


# ---------------------------------------------------------------------------- noise


def _stroke(colors: list[RGB], style: HardStyle, rng: np.random.Generator) -> tuple[RGB, int]:
    """Color and width of one line or arc: a character's look, or a random thin stroke."""
    if rng.uniform() < style.stroke_ink_fraction:
        return colors[int(rng.integers(len(colors)))], uniform_int(rng, style.ink_stroke_width)
    return _rgb(rng.uniform(0.0, 255.0, size=3)), uniform_int(rng, style.stroke_width)


def _draw_strokes(
    img: Image.Image, colors: list[RGB], style: HardStyle, rng: np.random.Generator
) -> None:
    """Straight lines and arcs that cross the text band, in text-like colors and widths."""
    draw = ImageDraw.Draw(img)
    w, h = style.width, style.height
    for _ in range(style.lines):
        x0, x1 = rng.uniform(0, 0.35) * w, rng.uniform(0.65, 1.0) * w
        y0, y1 = rng.uniform(0.15, 0.85, size=2) * h
        color, width = _stroke(colors, style, rng)
        draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
    for _ in range(style.arcs):
        # The top or bottom of a wide ellipse: a flat curve through the text band. Steep
        # arc ends would add stems that turn letters into others (q into d).
        top = bool(rng.uniform() < 0.5)
        rx, ry = rng.uniform(0.4, 1.0) * w, rng.uniform(0.3, 0.8) * h
        cx, apex = rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.75) * h
        cy = apex + ry if top else apex - ry
        span = rng.uniform(40.0, 100.0)
        start = (270.0 if top else 90.0) - span / 2
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        color, width = _stroke(colors, style, rng)
        draw.arc(box, start, start + span, fill=color, width=width)


def _draw_dots(img: Image.Image, style: HardStyle, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(img)
    xs = rng.uniform(0, style.width, size=style.dots)
    ys = rng.uniform(0, style.height, size=style.dots)
    radii = rng.uniform(style.dot_radius[0], style.dot_radius[1], size=style.dots)
    fills = rng.integers(0, 256, size=(style.dots, 3))
    for x, y, r, fill in zip(xs, ys, radii, fills, strict=True):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(fill))


# ---------------------------------------------------------------------------- warp


def _displacement(style: HardStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth field: a few sinusoids per axis, scaled so the peak is warp_amplitude."""
    fields = []
    for _ in range(2):
        field = np.zeros((style.height, style.width))
        for _ in range(style.warp_waves):
            angle = rng.uniform(0.0, 2 * np.pi)
            k = 2 * np.pi / _uniform(rng, style.warp_wavelength)
            phase = rng.uniform(0.0, 2 * np.pi)
            wave = _sin_plane(
                style.height, style.width, k * math.cos(angle), k * math.sin(angle), phase
            )
            field += rng.uniform(0.5, 1.0) * wave
        peak = float(np.abs(field).max())
        fields.append(field * style.warp_amplitude / max(peak, 1e-9))
    return fields[0], fields[1]


def _remap(pixels: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Bilinear sample of `pixels` at (x + dx, y + dy), clamped at the borders."""
    h, w = pixels.shape[:2]
    ys, xs = _grid(h, w)
    sx = np.clip(xs + dx, 0, w - 1)
    sy = np.clip(ys + dy, 0, h - 1)
    x0 = np.minimum(np.floor(sx).astype(int), w - 2)
    y0 = np.minimum(np.floor(sy).astype(int), h - 2)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x0 + 1] * fx
    bottom = pixels[y0 + 1, x0] * (1 - fx) + pixels[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _warp(img: Image.Image, style: HardStyle, rng: np.random.Generator) -> Image.Image:
    dx, dy = _displacement(style, rng)
    out = _remap(np.asarray(img, dtype=float), dx, dy)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------- public API


def render_hard(text: str, style: HardStyle, rng: np.random.Generator) -> Image.Image:
    """Draw `text` as an RGB hard captcha (before JPEG); all randomness comes from `rng`."""
    if not text:
        raise ValueError("cannot render an empty label")
    streams = _streams(rng)
    background = _background(style, streams["background"])
    img = Image.fromarray(np.rint(background).astype(np.uint8), "RGB")
    colors = _draw_text(img, background, text, style, streams["text"])
    _draw_strokes(img, colors, style, streams["strokes"])
    if style.warp_amplitude:
        img = _warp(img, style, streams["warp"])
    _draw_dots(img, style, streams["dots"])
    return img


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def sample_hard(style: HardStyle, seed: int, index: int) -> tuple[str, bytes]:
    """Sample `index` of the split seeded by `seed`; independent of the split size."""
    rng = np.random.default_rng([seed, index])
    label = draw_label(style, rng)
    img = render_hard(label, style, rng)
    # Drawn after rendering, so switching JPEG off leaves the pixels before it unchanged.
    if style.jpeg_quality:
        img = _jpeg(img, uniform_int(rng, style.jpeg_quality))
    return label, png_bytes(img)
