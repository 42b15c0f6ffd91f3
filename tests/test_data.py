"""Tests of the deterministic captcha generator and the split writer/reader."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from stages import data
from stages.data import CaptchaStyle, iter_split, make_split, read_split, render, write_split

STYLE = CaptchaStyle()


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
    style = CaptchaStyle(width=200, height=64)
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


def test_empty_text_and_negative_n_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        render("", STYLE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n="):
        make_split(STYLE, -1, seed=0)


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


# ---------------------------------------------------------------------------- split files


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    items = make_split(STYLE, 4, seed=11)
    out = tmp_path / "train"
    write_split(out, items)
    pairs = read_split(out)
    assert [p.name for p, _ in pairs] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert [(p.read_bytes(), label) for p, label in pairs] == [(b, lab) for lab, b in items]
    expected = json.dumps({f"{i:05d}.png": lab for i, (lab, _) in enumerate(items)}, indent=1)
    assert (out / "labels.json").read_text(encoding="utf-8").strip() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no temp dir left


def test_write_replaces_old_split_without_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "val"
    write_split(out, make_split(STYLE, 5, seed=1))
    write_split(out, [("é1", b"x"), ("b2", b"y")])
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "labels.json"]
    assert [label for _, label in read_split(out)] == ["é1", "b2"]
    assert "é1" in (out / "labels.json").read_text(encoding="utf-8")  # ensure_ascii=False


def test_failed_write_keeps_old_split_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "train"
    write_split(out, make_split(STYLE, 3, seed=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = iter(range(100))
    real_render = data.render

    def flaky_render(*args: Any) -> Image.Image:
        if next(calls) == 2:
            raise RuntimeError("renderer exploded")
        return real_render(*args)

    monkeypatch.setattr(data, "render", flaky_render)
    with pytest.raises(RuntimeError, match="exploded"):
        write_split(out, iter_split(STYLE, 5, seed=2))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_read_split_names_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "labels.json"))):
        read_split(tmp_path)


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"00000.png": 3}', '{"../x.png": "a"}']
)
def test_read_split_names_invalid_labels_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "labels.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "labels.json"))):
        read_split(tmp_path)


def test_read_split_names_missing_image(tmp_path: Path) -> None:
    write_split(tmp_path / "s", make_split(STYLE, 2, seed=0))
    (tmp_path / "s" / "00001.png").unlink()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "s" / "00001.png"))):
        read_split(tmp_path / "s")


# ---------------------------------------------------------------------------- calibration


@pytest.mark.integration
def test_stock_ddddocr_beta_reads_most_default_captchas() -> None:
    ddddocr = pytest.importorskip("ddddocr")
    ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    items = make_split(STYLE, 40, seed=2024)
    correct = sum(ocr.classification(png).lower() == label for label, png in items)
    assert correct >= 30, f"ddddocr beta read {correct}/40"
