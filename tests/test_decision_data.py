"""What the build's decisions see: sources the source model cannot read are left out, and with
none left the build stops and asks for labeled images; charset 'model' draws only what fonts can."""

from __future__ import annotations

from pathlib import Path

import pytest
import readable
from builders import recipe

from ocr_bundles_runtime.preprocess import Preprocess
from stages import charset as charsets
from stages import modelio
from stages.data import clean
from stages.data.dataset import SPLITS, SUMMARY_FILE, Sample, image_name, write_split
from stages.data.sources import SyntheticSource, drawable, resolved_style, write_synthetic
from stages.decision_data import READ_IMAGES, decision_context, readability
from stages.errors import DataError
from stages.records import BuildRecord, SourceSummary, SourceUse, write_record
from stages.report import data_table
from stages.scoring import Scoring

READER = readable.Reader(("", "a", "b", "c"))
MODEL = modelio.with_spec(READER.model(), list(READER.classes), "BTC", 0, "logits")
INPUT = Preprocess(height=READER.height, interpolation="bilinear")


def write_sources(root: Path) -> Path:
    """data/lines: stripes the reader reads; data/captchas: captchas it cannot."""
    style = clean.CaptchaStyle(alphabet="abc", width=64, height=16, font_size=(12, 14))
    for s, split in enumerate(SPLITS):
        lines = [
            Sample(image_name(i), t, READER.image(t))
            for i, t in enumerate(readable.texts("abc", 6, seed=s))
        ]
        write_split(root / "lines" / split, lines)
        caps = [Sample(image_name(i), *clean.sample(style, 10 + s, i)) for i in range(6)]
        write_split(root / "captchas" / split, caps)
    sizes = dict.fromkeys(SPLITS, 6)
    write_record(
        root / "captchas" / SUMMARY_FILE,
        SourceSummary(name="captchas", kind="synthetic", alphabet="abc", allowed=3, splits=sizes),
    )
    write_record(root / "lines" / SUMMARY_FILE, SourceSummary(name="lines", kind="folder",
                                                             splits=sizes))  # fmt: skip
    return root


def test_a_source_the_model_cannot_read_is_left_out_of_every_decision(tmp_path, capsys):
    data = write_sources(tmp_path)
    rec = recipe([{"fix_output_shape": {}}], preprocess=INPUT.as_dict())
    context, uses = decision_context(MODEL, data, ["captchas", "lines"], rec, "abc", Scoring(), 0.3)
    assert uses["lines"].accuracy == 1.0 and uses["lines"].used
    assert uses["captchas"].accuracy < 0.3 and not uses["captchas"].used
    assert uses["lines"].images == 6
    assert (uses["captchas"].kind, uses["captchas"].alphabet) == ("synthetic", "abc")
    assert list(context.validation) == ["lines"]
    assert len(context.calibration) == 6  # the captchas' calib images are gone too
    assert "source captchas left out of the decisions" in capsys.readouterr().out

    context, uses = decision_context(MODEL, data, ["captchas", "lines"], rec, "abc", Scoring(), 0.0)
    assert all(u.used for u in uses.values()) and len(context.validation) == 2


def test_no_readable_source_stops_the_build_and_asks_for_a_folder(tmp_path):
    data = write_sources(tmp_path)
    rec = recipe([{"fix_output_shape": {}}], preprocess=INPUT.as_dict())
    with pytest.raises(DataError, match=r"data.min_accuracy 30%.*captchas 0%.*data.folders"):
        decision_context(MODEL, data, ["captchas"], rec, "abc", Scoring(), 0.3, "p.yaml")


def test_readability_reads_only_the_first_images_and_keeps_a_source_without_val():
    x = [(READER.image("ab"), "ab")] * (READ_IMAGES + 5)
    from ocr_bundles_runtime.preprocess import preprocess

    val = {"many": [(preprocess(img, INPUT), t) for img, t in x], "none": []}
    uses = readability(MODEL, val, recipe([]).runtime, Scoring(), 0.5)
    assert (uses["many"].images, uses["many"].accuracy) == (READ_IMAGES, 1.0)
    assert uses["none"].used and uses["none"].accuracy is None


def test_charset_model_is_the_dictionary_s_single_characters():
    assert charsets.resolve("model", ["", "a", "b", "ab", "a", " "]) == "ab "
    with pytest.raises(ValueError, match="model stage"):
        charsets.resolve("model")


def test_charset_model_draws_only_what_every_font_of_the_style_has(tmp_path):
    style = clean.CaptchaStyle(width=64, height=32, font_size=(20, 22))
    assert drawable(style, "ab 中\u0301c") == "abc"  # no space, no CJK, no lone combining mark
    source = SyntheticSource(seed=1, calib=1, val=1, eval=2, style=style)
    summary = write_synthetic("s", source, "ab中c", tmp_path / "s", drawable_only=True)
    assert (summary.alphabet, summary.allowed) == ("abc", 4)
    with pytest.raises(DataError, match="no character of the model's dictionary"):
        resolved_style(source, "中文", drawable_only=True)


def test_the_report_says_what_each_source_covers_and_who_decided_on_it():
    uses = {
        "clean": SourceUse(accuracy=0.0, images=8, used=False, kind="synthetic",
                           alphabet="abcde", allowed=6),
        "lines": SourceUse(accuracy=1.0, images=12, used=True, kind="folder"),
    }  # fmt: skip
    builds = {t: BuildRecord(target=t, stages=[], sources=uses) for t in ("mid", "low")}
    text = data_table(builds)
    clean_row = next(r for r in text.splitlines() if "`clean`" in r)
    assert "5 of 6 allowed (`abcde`)" in clean_row and "0.0 %" in clean_row
    assert "none (below data.min_accuracy)" in clean_row
    assert "mid, low" in next(r for r in text.splitlines() if "`lines`" in r)
