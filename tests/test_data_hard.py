"""Tests of the deterministic `hard` captcha style (no OCR model involved)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from stages.data import hard as hard_style
from stages.data.hard import HardStyle, render_hard, sample_hard

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
STYLE = HardStyle(alphabet=ALPHABET)
ROOT = Path(__file__).resolve().parents[1]

# Each entry switches one feature off.
FEATURES_OFF: dict[str, dict[str, Any]] = {
    "gradient": {"background_gradient": 0},
    "smooth_noise": {"background_smooth_noise": 0},
    "stripes": {"background_stripes": 0},
    "blobs": {"background_blobs": 0},
    "grain": {"background_grain": 0},
    "color_per_char": {"color_per_char": False},
    "min_contrast": {"min_contrast": 0},
    "lines": {"lines": 0},
    "arcs": {"arcs": 0},
    "dots": {"dots": 0},
    "rotation": {"rotation_deg": 0},
    "warp": {"warp_amplitude": 0},
    "overlap": {"spacing": (0.0, 0.0)},
    "jitter": {"vertical_jitter": 0},
    "fonts": {"fonts": ["dejavu_sans"]},
}
# Every noise source off: background texture, strokes, speckles and JPEG.
NOISE_OFF: dict[str, Any] = {
    "background_smooth_noise": 0,
    "background_stripes": 0,
    "background_blobs": 0,
    "background_grain": 0,
    "lines": 0,
    "arcs": 0,
    "dots": 0,
    "jpeg_quality": None,
}


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def _render(style: HardStyle, seed: int = 3) -> np.ndarray:
    return np.asarray(render_hard("ab3x9", style, np.random.default_rng(seed)), dtype=np.int16)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_bytes() -> None:
    assert [sample_hard(STYLE, 7, i) for i in range(4)] == [
        sample_hard(STYLE, 7, i) for i in range(4)
    ]


def test_bytes_are_identical_in_a_fresh_process() -> None:
    code = (
        "import hashlib\n"
        "from stages.data.hard import HardStyle, sample_hard\n"
        "for i in range(3):\n"
        "    style = HardStyle(alphabet='abcdefghijklmnopqrstuvwxyz0123456789')\n"
        "    label, png = sample_hard(style, 7, i)\n"
        "    print(label, hashlib.sha256(png).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    here = [
        f"{label} {hashlib.sha256(png).hexdigest()}"
        for label, png in (sample_hard(STYLE, 7, i) for i in range(3))
    ]
    assert out.splitlines() == here


def test_different_indices_give_different_samples() -> None:
    samples = [sample_hard(STYLE, 7, i) for i in range(6)]
    assert len({png for _, png in samples}) == 6
    assert len({label for label, _ in samples}) > 1


def test_labels_use_alphabet_and_length_range() -> None:
    style = HardStyle(alphabet="ab7", min_length=2, max_length=3)
    labels = [sample_hard(style, 3, i)[0] for i in range(40)]
    assert all(set(label) <= set("ab7") for label in labels)
    assert {len(label) for label in labels} == {2, 3}


@pytest.mark.parametrize(("width", "height"), [(160, 60), (200, 64)])
def test_png_decodes_to_rgb_of_style_size(width: int, height: int) -> None:
    _, png = sample_hard(HardStyle(alphabet=ALPHABET, width=width, height=height), 1, 0)
    with Image.open(io.BytesIO(png)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (width, height))
        assert not {"text", "exif", "icc_profile"} & set(img.info)


def test_render_hard_returns_rgb_image_of_style_size() -> None:
    img = render_hard("k2", STYLE, np.random.default_rng(0))
    assert (img.mode, img.size) == ("RGB", (STYLE.width, STYLE.height))
    with pytest.raises(ValueError, match="empty"):
        render_hard("", STYLE, np.random.default_rng(0))


# ---------------------------------------------------------------------------- features


@pytest.mark.parametrize("name", sorted(FEATURES_OFF))
def test_each_feature_can_be_switched_off(name: str) -> None:
    off = _render(HardStyle(**FEATURES_OFF[name]))
    assert off.shape == (STYLE.height, STYLE.width, 3)
    assert np.any(off != _render(STYLE)), f"switching {name} off changed nothing"


def test_features_use_independent_random_streams() -> None:
    # Dots are drawn last from their own stream: removing them only clears the speckles.
    changed = np.any(_render(HardStyle(dots=0)) != _render(STYLE), axis=-1).mean()
    assert 0 < changed < 0.1


def test_noise_off_has_fewer_colors_and_less_high_frequency_energy() -> None:
    def stats(style: HardStyle) -> tuple[float, float]:
        colors, energy = [], []
        for i in range(6):
            rgb = _pixels(sample_hard(style, 7, i)[1])
            colors.append(len(np.unique(rgb.reshape(-1, 3), axis=0)))
            luma = rgb @ np.array([0.299, 0.587, 0.114])
            energy.append(np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma)).mean())
        return float(np.mean(colors)), float(np.mean(energy))

    noisy_colors, noisy_energy = stats(STYLE)
    quiet_colors, quiet_energy = stats(HardStyle(alphabet=ALPHABET, **NOISE_OFF))
    assert quiet_colors < 0.5 * noisy_colors
    assert quiet_energy < 0.6 * noisy_energy


def test_jpeg_recompression_changes_pixels_only_slightly() -> None:
    label, plain = sample_hard(HardStyle(alphabet=ALPHABET, jpeg_quality=None), 7, 2)
    label_jpeg, jpeg = sample_hard(STYLE, 7, 2)
    assert label == label_jpeg
    diff = np.abs(_pixels(plain) - _pixels(jpeg))
    assert diff.any()
    assert diff.mean() < 20  # the same picture, re-compressed


def test_jpeg_off_sample_equals_render_hard() -> None:
    style = HardStyle(alphabet=ALPHABET, jpeg_quality=(0, 0))
    assert style.jpeg_quality is None
    label, png = sample_hard(style, 5, 1)
    rng = np.random.default_rng([5, 1])
    assert len(label) == int(rng.integers(style.min_length, style.max_length + 1))
    rng.integers(len(style.alphabet), size=len(label))
    assert np.array_equal(_pixels(png), np.asarray(render_hard(label, style, rng)))


@pytest.mark.parametrize("font", get_args(hard_style.FontName))
def test_every_font_renders(font: str) -> None:
    img = render_hard("g7", HardStyle(fonts=[font]), np.random.default_rng(0))
    assert img.size == (STYLE.width, STYLE.height)


def test_missing_font_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hard_style.util, "find_spec", lambda name: None)
    hard_style._font.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="'matplotlib' package"):
            hard_style._font("dejavu_serif", 30)
    finally:
        hard_style._font.cache_clear()


# ---------------------------------------------------------------------------- validation


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        HardStyle(noise=3)  # type: ignore[call-arg]


def test_style_is_frozen() -> None:
    with pytest.raises(ValidationError):
        STYLE.dots = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("font_size", (40, 30)),
        ("font_size", (0, 30)),
        ("stroke_width", (3, 1)),
        ("ink_stroke_width", (0, 2)),
        ("background_level", (200, 100)),
        ("spacing", (-0.9, 0.0)),
        ("spacing", (0.2, 0.1)),
        ("dot_radius", (0.0, 1.0)),
        ("warp_wavelength", (50.0, 20.0)),
        ("jpeg_quality", (80, 20)),
        ("jpeg_quality", (0, 90)),
    ],
)
def test_bad_range_is_rejected_naming_the_field(field: str, value: tuple[float, float]) -> None:
    with pytest.raises(ValidationError, match=f"{field}: need"):
        HardStyle(**{field: value})


@pytest.mark.parametrize(
    "fields",
    [{"dots": -1}, {"rotation_deg": 120}, {"min_contrast": 200}, {"warp_waves": 0}, {"fonts": []}],
)
def test_out_of_bounds_values_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        HardStyle(**fields)


def test_min_length_above_max_length_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"min_length \(5\) must be <= max_length \(3\)"):
        HardStyle(min_length=5, max_length=3)


def test_duplicate_alphabet_characters_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"duplicate characters \['a'\]"):
        HardStyle(alphabet="abca")
