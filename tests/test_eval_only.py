"""Evaluation-only sources (params.yaml `eval_only`) and the `imagecaptcha` style that uses it:
no build decision may see them, and the style's images come from seeds alone."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages.data import imagecaptcha
from stages.data.dataset import read_split
from stages.data.folder import FolderSource, split
from stages.data.sources import SyntheticSource, check_glyphs, resolved_style, write_synthetic
from stages.errors import RecipeError
from stages.params import Params, load_params
from stages.records import BuildRecord, SourceUse
from stages.report import data_table

ROOT = Path(__file__).resolve().parents[1]
STYLE = {"generator": "imagecaptcha"}


def test_an_eval_only_source_has_no_calibration_or_validation_images(tmp_path: Path) -> None:
    source = SyntheticSource(seed=5, eval=3, eval_only=True, style=STYLE)
    assert (source.calib, source.val, source.eval) == (0, 0, 3)
    summary = write_synthetic("unseen", source, "abc", tmp_path / "unseen")
    assert summary.splits == {"calib": 0, "val": 0, "eval": 3}
    assert len(read_split(tmp_path / "unseen" / "eval")) == 3


@pytest.mark.parametrize("field", ["calib", "val"])
def test_eval_only_refuses_decision_images_and_says_what_to_do(field: str) -> None:
    with pytest.raises(ValueError, match=rf"eval_only.*'{field}': 5.*remove it"):
        SyntheticSource(seed=5, eval=3, eval_only=True, **{field: 5})
    with pytest.raises(ValueError, match=rf"eval_only.*'{field}': 0.2"):
        FolderSource(path="x", eval_only=True, **{field: 0.2})


def test_an_eval_only_folder_sends_every_image_to_eval() -> None:
    from stages.data.dataset import Sample

    samples = [Sample(f"{i:03d}_x.png", "x", b"") for i in range(40)]
    parts = split(samples, FolderSource(path="x", eval_only=True))
    assert (len(parts["calib"]), len(parts["val"]), len(parts["eval"])) == (0, 0, 40)
    some = split(samples, FolderSource(path="x"))  # the default shares do split them
    assert len(some["calib"]) + len(some["val"]) > 0


def _params(mutate) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw["data"])
    return Params.model_validate(raw, context={"file": "params.yaml"})


def test_decisions_see_every_source_but_the_eval_only_ones() -> None:
    shipped = load_params(ROOT / "params.yaml")
    assert shipped.data.synthetic["unseen"].eval_only  # the shipped eval-only style
    assert "unseen" in shipped.data.sources()
    assert "unseen" not in shipped.data.decision_sources()
    assert shipped.data.decision_sources() == [s for s in shipped.data.sources() if s != "unseen"]


def test_params_with_only_eval_only_sources_are_refused() -> None:
    def only_unseen(data: dict) -> None:
        data["synthetic"] = {"unseen": copy.deepcopy(data["synthetic"]["unseen"])}

    with pytest.raises((ValueError, RecipeError), match="every data source is eval_only"):
        _params(only_unseen)


def test_the_build_and_the_preprocess_choice_read_decision_sources_only() -> None:
    """The verbs that decide (build: calibration and validation; preprocess: the table recipes
    choose from) pass decision_sources; the verbs that report pass every source."""
    import inspect

    from stages import cli

    for verb in ("build", "preprocess"):
        src = inspect.getsource(cli.VERBS[verb][0])
        assert "data.decision_sources()" in src and "data.sources()" not in src, verb
    for verb in ("evaluate", "verify", "bench", "baselines"):
        assert "data.sources()" in inspect.getsource(cli.VERBS[verb][0]), verb


# ---------------------------------------------------------------------------- the style


def _style(**changes) -> imagecaptcha.ImageCaptchaStyle:
    source = SyntheticSource(seed=1, eval=1, eval_only=True, style={**STYLE, **changes})
    return resolved_style(source, "abcdefghijklmnopqrstuvwxyz0123456789")


def test_imagecaptcha_images_follow_the_seed_and_index_only() -> None:
    style = _style()
    a = imagecaptcha.sample_imagecaptcha(style, 11, 0)
    assert a == imagecaptcha.sample_imagecaptcha(style, 11, 0)  # same bytes, same label
    assert a != imagecaptcha.sample_imagecaptcha(style, 11, 1)
    assert a != imagecaptcha.sample_imagecaptcha(style, 12, 0)
    # the stand-in is bound only while an image is drawn: the library is left as it was
    from captcha import image as captcha_image

    assert captcha_image.secrets.__name__ == "secrets"


def test_imagecaptcha_draws_the_style_size_and_ink() -> None:
    import io

    label, data = imagecaptcha.sample_imagecaptcha(_style(width=180, height=50), 3, 7)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (180, 50) and im.mode == "RGB"
        pixels = np.asarray(im.convert("L"), dtype=np.int16)
    assert 4 <= len(label) <= 6
    assert pixels.max() - pixels.min() > 100  # text drawn, not a blank background


def test_imagecaptcha_fonts_draw_every_lower_case_letter_and_digit() -> None:
    check_glyphs(_style(), "x")  # no exception: Computer Modern covers the shipped charset
    names = {name for name, _ in imagecaptcha.style_fonts(_style())}
    assert names == {"cm_sans", "cm_roman", "cm_bold", "cm_typewriter"}


def test_imagecaptcha_style_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="fonts"):
        SyntheticSource(seed=1, eval=1, style={**STYLE, "fonts": ["comic_sans"]})


# ---------------------------------------------------------------------------- the report


def test_the_report_names_an_evaluated_set_no_build_read_as_evaluation_only() -> None:
    uses = {"clean": SourceUse(accuracy=0.9, images=8, used=True, kind="synthetic",
                               alphabet="abc", allowed=3)}  # fmt: skip
    builds = {t: BuildRecord(target=t, stages=[], sources=uses) for t in ("mid", "low")}
    text = data_table(builds, ["clean", "unseen"])
    row = next(r for r in text.splitlines() if "`unseen`" in r)
    assert "evaluation only" in row and "not read by any build" in row
    assert "mid, low" in next(r for r in text.splitlines() if "`clean`" in r)
    assert "`unseen`" not in data_table(builds)  # only sets that were evaluated
