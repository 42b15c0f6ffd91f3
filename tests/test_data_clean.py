"""Tests of the deterministic captcha generator and the split writer/reader."""

from __future__ import annotations

import io
from typing import Any, get_args

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from stages.data import clean as data
from stages.data.clean import CaptchaStyle, render, sample

STYLE = CaptchaStyle(alphabet="abcdefghijklmnopqrstuvwxyz0123456789")


def make_split(style: CaptchaStyle, n: int, seed: int) -> list[tuple[str, bytes]]:
    return [sample(style, seed, i) for i in range(n)]


def _decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


# ---------------------------------------------------------------------------- generation


def test_same_seed_gives_identical_bytes_and_labels() -> None:
    assert make_split(STYLE, 6, seed=7) == make_split(STYLE, 6, seed=7)


def test_different_seed_gives_different_split() -> None:
    a, b = make_split(STYLE, 6, seed=1), make_split(STYLE, 6, seed=2)
    assert [label for label, _ in a] != [label for label, _ in b]
    assert all(pa != pb for (_, pa), (_, pb) in zip(a, b, strict=True))


def test_sample_does_not_depend_on_split_size() -> None:
    assert make_split(STYLE, 3, seed=5) == make_split(STYLE, 9, seed=5)[:3]


def test_labels_use_alphabet_and_length_range() -> None:
    style = CaptchaStyle(alphabet="ab7", min_length=2, max_length=3)
    labels = [label for label, _ in make_split(style, 60, seed=3)]
    assert all(set(label) <= set("ab7") for label in labels)
    assert {len(label) for label in labels} == {2, 3}


def test_png_decodes_to_rgb_of_style_size() -> None:
    style = CaptchaStyle(width=200, height=64, alphabet="ab12")
    for _, png in make_split(style, 3, seed=0):
        img = _decode(png)
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (200, 64))
        assert not {"text", "exif", "icc_profile"} & set(img.info)


@pytest.mark.parametrize("font", get_args(data.FontName))
@pytest.mark.parametrize("colors", get_args(data.ColorScheme))
def test_every_font_and_color_scheme_renders(font: str, colors: str) -> None:
    style = CaptchaStyle(fonts=[font], colors=colors)
    img = np.asarray(render("ab12", style, np.random.default_rng(0)))
    assert img.shape == (60, 160, 3)
    assert img.std() > 10  # something was drawn on the background
    if colors == "grayscale":
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_long_text_is_scaled_to_fit() -> None:
    img = render("mwmwmwmwmwmw", STYLE, np.random.default_rng(0))
    assert img.size == (STYLE.width, STYLE.height)


def test_empty_text_and_unresolved_alphabet_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        render("", STYLE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="resolve it from the charset"):
        sample(CaptchaStyle(), 0, 0)


# ---------------------------------------------------------------------------- style validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_length": 5, "max_length": 4},
        {"min_length": 0},
        {"alphabet": ""},
        {"alphabet": "abca"},
        {"fonts": []},
        {"fonts": ["comic_sans"]},
        {"font_size": (40, 30)},
        {"overlap": (0.2, 0.1)},
        {"colors": "neon"},
        {"unknown_field": 1},
    ],
)
def test_invalid_style_raises_validation_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CaptchaStyle(**kwargs)


def test_every_style_field_is_described() -> None:
    assert all(f.description for f in CaptchaStyle.model_fields.values())


# ---------------------------------------------------------------------------- calibration


@pytest.mark.integration
def test_stock_ddddocr_beta_reads_most_default_captchas() -> None:
    ddddocr = pytest.importorskip("ddddocr")
    ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    items = make_split(STYLE, 40, seed=2024)  # the lowercase + digits alphabet
    correct = sum(ocr.classification(png).lower() == label for label, png in items)
    assert correct >= 30, f"ddddocr beta read {correct}/40"
