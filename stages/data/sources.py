"""Data sources: generated styles (`data.synthetic.<name>`) and folders of the user's own
labeled images (`data.folders.<name>`), each written to data/<name>/{calib,val,eval}.

Two kinds under two keys because DVC can only make a folder a dependency of a stage that is
declared per folder: `dvc.yaml` runs `synthetic@<name>` and `folder@<name>` with `foreach`, so
editing one image reruns that source and what follows, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from PIL import Image, ImageChops, ImageDraw
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ocr_bundles_runtime.preprocess import Preprocess

from ..atomic import atomic_dir
from ..errors import DataError
from ..progress import Progress
from ..records import SourceSummary, write_record
from . import clean, hard, imagecaptcha
from . import folder as folders
from .dataset import SPLITS, SUMMARY_FILE, Sample, eval_only_splits, image_name, write_split


def _generator(value: Any) -> str:
    """The style's generator; a style that names none is the clean one."""
    if isinstance(value, dict):
        return value.get("generator", "clean")
    return getattr(value, "generator", "clean")


Style = Annotated[
    Annotated[clean.CaptchaStyle, Tag("clean")]
    | Annotated[hard.HardStyle, Tag("hard")]
    | Annotated[imagecaptcha.ImageCaptchaStyle, Tag("imagecaptcha")],
    Discriminator(_generator),
]


# generator -> (style, seed, index) -> (label, image bytes); generator -> its fonts
_SAMPLERS: dict[str, Callable[[Any, int, int], tuple[str, bytes]]] = {
    "clean": clean.sample,
    "hard": hard.sample_hard,
    "imagecaptcha": imagecaptcha.sample_imagecaptcha,
}
_FONTS: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {
    "clean": clean.style_fonts,
    "hard": hard.style_fonts,
    "imagecaptcha": imagecaptcha.style_fonts,
}


class SyntheticSource(BaseModel):
    """params.yaml data.synthetic.<name>: a seeded generator and its split sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(ge=0, description="seed of every image of this source")
    calib: int = Field(64, ge=0, description="calibration images")
    val: int = Field(300, ge=0, description="validation images (decisions are made on these)")
    eval: int = Field(1000, ge=0, description="evaluation images (every reported accuracy)")
    style: Style = Field(
        default_factory=clean.CaptchaStyle,
        description="the look: {generator: clean | hard | imagecaptcha, ...its fields}",
    )
    eval_only: bool = Field(
        False,
        description="evaluation only: no calibration or validation images, so no build "
        "decision (calibration, quantization, preprocessing choice, conformance vectors) ever "
        "sees this source; its column shows whether the claims carry over",
    )

    @model_validator(mode="before")
    @classmethod
    def _eval_only_splits(cls, raw: Any) -> Any:
        return eval_only_splits(raw, 0)

    def sizes(self) -> dict[str, int]:
        return {"calib": self.calib, "val": self.val, "eval": self.eval}


def resolved_style(
    source: SyntheticSource, allowed: str, drawable_only: bool = False, where: str = "style"
) -> clean.CaptchaStyle | hard.HardStyle | imagecaptcha.ImageCaptchaStyle:
    """The style with its alphabet: its own, or the pipeline's charset; with `drawable_only`
    (charset 'model': a dictionary no font covers) only the characters every font draws."""
    style = source.style
    if style.alphabet:
        return style
    alphabet = drawable(style, allowed) if drawable_only else allowed
    if not alphabet:
        raise DataError(
            f"{where}: no character of the model's dictionary has a glyph in every font of this "
            "style; bring your own labeled images (data.folders) and drop this source"
        )
    return style.model_copy(update={"alphabet": alphabet})


def drawable(style: Any, chars: str) -> str:
    """The characters of `chars` that every font of `style` draws as a glyph of its own (not
    the box a missing code point gets, not nothing); whitespace is no captcha character."""
    fonts = [font for _, font in style_fonts(style)]
    missing = [_mask(font, "\U0010fffd") for font in fonts]
    return "".join(
        ch
        for ch in chars
        if not ch.isspace()
        and all(_inks(f, ch) and _mask(f, ch) != m for f, m in zip(fonts, missing, strict=True))
    )


def _mask(font: Any, ch: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(ch)
    return mask.size, bytes(mask)


def _inks(font: Any, ch: str) -> bool:
    left, top, right, bottom = font.getbbox(ch)
    return right > left and bottom > top


def synthetic_samples(
    source: SyntheticSource, style: Any, split: str, bar: Progress
) -> Iterator[Sample]:
    """Split `split` of a synthetic source; split k of seed s draws from seed s + k."""
    sample = _SAMPLERS[style.generator]
    seed = source.seed + SPLITS.index(split)
    for index in range(source.sizes()[split]):
        label, data = sample(style, seed, index)
        bar.step()
        yield Sample(image_name(index), label, data)


def write_synthetic(
    name: str,
    source: SyntheticSource,
    allowed: str,
    out: Path,
    params_file: str = "params.yaml",
    drawable_only: bool = False,
) -> SourceSummary:
    """Generate every split of `name` into `out` atomically; returns its summary, which says
    which of the allowed characters its labels draw from (the report states the coverage)."""
    where = f"{params_file}: data.synthetic.{name}"
    style = resolved_style(source, allowed, drawable_only, f"{where}.style")
    check_glyphs(style, where)
    bar = Progress(f"synthetic@{name}", sum(source.sizes().values()))
    with atomic_dir(out) as tmp:
        sizes = {
            split: write_split(tmp / split, synthetic_samples(source, style, split, bar))
            for split in SPLITS
        }
        summary = SourceSummary(
            name=name,
            kind="synthetic",
            generator=style.generator,
            alphabet=style.alphabet,
            allowed=len(allowed),
            splits=sizes,
        )
        write_record(tmp / SUMMARY_FILE, summary)
    bar.close()
    return summary


def write_folder(
    name: str,
    source: folders.FolderSource,
    allowed: str,
    normalize: Callable[[str], str],
    out: Path,
    params_file: str = "params.yaml",
    *,
    spec: Preprocess,
) -> SourceSummary:
    """Check, split and copy the folder `name` into `out` atomically; returns its summary.
    `spec`: the contract's preprocessing (params.yaml model.input, as contract.json holds it)."""
    scan = folders.scan(source, f"{params_file}: data.folders.{name}", normalize, allowed, spec)
    parts = folders.split(scan.samples, source)
    with atomic_dir(out) as tmp:
        sizes = {split: write_split(tmp / split, parts[split]) for split in SPLITS}
        summary = SourceSummary(
            name=name,
            kind="folder",
            path=source.path,
            splits=sizes,
            skipped=scan.skipped,
            duplicates=scan.duplicates,
            ignored=scan.ignored,
        )
        write_record(tmp / SUMMARY_FILE, summary)
    return summary


def check_glyphs(style: Any, where: str) -> None:
    """Every character must have a glyph in every font: a missing one renders as the same box
    (or nothing) as a code point no font has, and would teach nothing but tofu."""
    missing = {
        (font_name, ch)
        for font_name, font in style_fonts(style)
        for ch in style.alphabet
        if not ch.isspace() and _same_mask(font, ch, "\U0010fffd")
    }
    if missing:
        shown = sorted(missing)[:10]
        raise DataError(
            f"{where}.style: fonts lack glyphs for {shown}; synthetic captchas cannot draw these "
            "characters: bring your own labeled images (data.folders) or narrow the alphabet"
        )


def style_fonts(style: Any) -> list[tuple[str, Any]]:
    return _FONTS[style.generator](style)


def _same_mask(font: Any, a: str, b: str) -> bool:
    def draw(ch: str) -> Image.Image:
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text((16, 16), ch, fill=255, font=font)
        return img

    return ImageChops.difference(draw(a), draw(b)).getbbox() is None
