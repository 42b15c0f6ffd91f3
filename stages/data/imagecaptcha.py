"""The `imagecaptcha` synthetic style: captchas drawn by another library, in other fonts.

Claims made on the clean and hard styles (both this project's own generators, fonts from the
`captcha` package, Pillow and matplotlib's DejaVu) may hold only for what those generators
draw. This style is drawn by the `captcha` package's own `ImageCaptcha` (per-character warp,
rotation and squeeze, noise dots and a curve, a smoothing filter: the look of many web
captchas) in matplotlib's Computer Modern fonts, which no other style uses. params.yaml marks
it `eval_only`: no calibration, validation or decision ever sees it, so its column in the
report shows whether the other columns' claims carry over.

`ImageCaptcha` draws its randomness from the `secrets` module, which cannot be seeded. While
one image is drawn, the module's `secrets` name is bound to a stand-in with the same three
functions (randbelow, randbits, choice) fed by the sample's `numpy.random.Generator`, so
(seed, index) give equal bytes with the pinned `captcha`, Pillow and matplotlib versions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib import util
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from captcha import image as captcha_image
from PIL import ImageFont
from pydantic import Field

from .dataset import png_bytes
from .style import IntRange, StyleBase, draw_label

FontName = Literal["cm_sans", "cm_roman", "cm_bold", "cm_typewriter"]
_FONT_FILES: dict[str, str] = {  # matplotlib's Computer Modern (BaKoMa) TrueType fonts
    "cm_sans": "cmss10.ttf",
    "cm_roman": "cmr10.ttf",
    "cm_bold": "cmb10.ttf",
    "cm_typewriter": "cmtt10.ttf",
}
T = TypeVar("T")
_PATCH = threading.Lock()  # the stand-in is bound module-wide: one image at a time


class ImageCaptchaStyle(StyleBase):
    """How `captcha.image.ImageCaptcha` draws; defaults measured so that stock ddddocr reads
    about 40 % (its own settings, 160x60 with word spaces, read about 15 %)."""

    generator: Literal["imagecaptcha"] = Field(
        "imagecaptcha", description="This style's generator."
    )
    width: int = Field(200, ge=16, le=2048, description="Image width in pixels.")
    fonts: list[FontName] = Field(
        default_factory=lambda: ["cm_sans", "cm_roman", "cm_bold", "cm_typewriter"],
        min_length=1,
        description="matplotlib's Computer Modern fonts to pick from, one per character.",
    )
    font_sizes: list[int] = Field(
        default_factory=lambda: [36, 40, 44],
        min_length=1,
        description="Font sizes in pixels ImageCaptcha picks from, per character.",
    )
    rotation_deg: IntRange = Field(
        (-15, 15), description="ImageCaptcha.character_rotate: range of a character's rotation."
    )
    warp: tuple[float, float] = Field(
        (0.05, 0.15),
        description="ImageCaptcha.character_warp_dx and _dy: range of a character's warp, as a "
        "fraction of its size.",
    )
    word_space_probability: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="ImageCaptcha inserts a blank character before a character with probability "
        "1 minus this (its default 0.5 squeezes six characters into illegibility).",
    )


class _Secrets:
    """The `secrets` functions ImageCaptcha calls, drawn from a seeded generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return int(self._rng.integers(n))

    def randbits(self, k: int) -> int:
        return int(self._rng.integers(0, 1 << k))

    def choice(self, seq: Sequence[T]) -> T:
        return seq[int(self._rng.integers(len(seq)))]


class _Captcha(captcha_image.ImageCaptcha):
    """ImageCaptcha with the style's settings and fonts loaded with Pillow's BASIC layout
    (raqm may or may not be installed, and it could shift glyphs)."""

    def __init__(self, style: ImageCaptchaStyle) -> None:
        super().__init__(style.width, style.height, [], tuple(style.font_sizes))
        self._truefonts = [_font(name, size) for name in style.fonts for size in style.font_sizes]
        self.character_rotate = style.rotation_deg
        self.character_warp_dx = self.character_warp_dy = style.warp
        self.word_space_probability = style.word_space_probability


@contextmanager
def _seeded(rng: np.random.Generator) -> Iterator[None]:
    with _PATCH:
        saved: Any = captcha_image.secrets
        captcha_image.secrets = _Secrets(rng)
        try:
            yield
        finally:
            captcha_image.secrets = saved


def sample_imagecaptcha(style: ImageCaptchaStyle, seed: int, index: int) -> tuple[str, bytes]:
    """Sample `index` of the split seeded by `seed`; independent of the split size."""
    rng = np.random.default_rng([seed, index])
    label = draw_label(style, rng)
    with _seeded(rng):
        img = _Captcha(style).generate_image(label)
    return label, png_bytes(img)


# ---------------------------------------------------------------------------- fonts


def _fonts_dir() -> Path:
    """matplotlib's TrueType folder, found without importing matplotlib (it is slow)."""
    spec = util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the imagecaptcha style needs the 'matplotlib' package for its fonts")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"


@lru_cache(maxsize=64)
def _font(name: FontName, size: int) -> ImageFont.FreeTypeFont:
    path = _fonts_dir() / _FONT_FILES[name]
    if not path.is_file():
        raise RuntimeError(f"font {path.name} is missing from the installed 'matplotlib' package")
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


def style_fonts(style: ImageCaptchaStyle) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """(name, loaded font) per style font, for glyph-coverage checks."""
    return [(name, _font(name, max(style.font_sizes))) for name in style.fonts]
