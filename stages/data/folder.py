"""A folder of the user's own labeled captchas as a data source.

Labels come from `labels.json` ({file name: text}) when the folder has one, else from the file
name: the text before the first underscore, or the whole stem (`x7k2p_0031.png` and
`x7k2p.png` both read "x7k2p"), the convention captcha training tools use.

Every image goes to calib, val or eval by a stable hash of its file name, so adding images never
moves the ones already there. Before anything is written: labels outside the charset are an
error naming the files; unreadable images are skipped with their runtime error code; exact
duplicates (same bytes) keep one copy, so an eval image can never also be a calibration image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ocr_bundles_runtime.preprocess import Preprocess, load_pixels

from ..errors import DataError, ImageError
from .dataset import LABELS_FILE, SPLITS, Sample, eval_only_splits, read_labels

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
SHOWN = 8  # offending files named in one error message


class FolderSource(BaseModel):
    """params.yaml data.folders.<name>."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="folder of images (relative to the repository, or absolute)")
    labels: Literal["auto", "labels.json", "filename"] = Field(
        "auto",
        description="auto: labels.json when the folder has one, else the file name's text "
        "before the first underscore",
    )
    calib: float = Field(0.15, ge=0, lt=1, description="share of images for calibration")
    val: float = Field(0.25, ge=0, lt=1, description="share of images the optimizer decides on")
    eval_only: bool = Field(
        False,
        description="every image to eval: a held-out set no build decision ever sees",
    )

    @model_validator(mode="before")
    @classmethod
    def _eval_only_shares(cls, raw: Any) -> Any:
        return eval_only_splits(raw, 0.0)

    @model_validator(mode="after")
    def _leaves_eval(self) -> FolderSource:
        if self.calib + self.val >= 0.95:
            raise ValueError(
                f"calib ({self.calib}) + val ({self.val}) leave under 5 % of the images for "
                "evaluation; lower them"
            )
        return self


@dataclass
class Scan:
    """What a folder holds, before splitting."""

    samples: list[Sample] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # name, code, detail
    duplicates: list[dict[str, str | bool]] = field(default_factory=list)  # name, same_as, ...
    ignored: list[str] = field(default_factory=list)  # not images, or images without a label


def split_of(name: str, calib: float, val: float) -> str:
    """calib, val or eval from the SHA-256 of the file name: stable as the folder grows."""
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64
    return "calib" if u < calib else "val" if u < calib + val else "eval"


def label_from_name(name: str) -> str:
    return Path(name).stem.split("_", 1)[0]


def scan(
    source: FolderSource,
    where: str,
    normalize: Callable[[str], str],
    allowed: str,
    spec: Preprocess,
) -> Scan:
    """Read and check the folder; DataError for what the user must fix, skips for the rest.
    `spec`: the contract's preprocessing (model.input), whose decoder and pixel limit
    the recognizer will apply to these images."""
    root = Path(source.path)
    if not root.is_dir():
        raise DataError(f"{where}.path: {root} is not a folder; point it at your labeled images")
    labels = _labels(root, source, where)
    out = Scan()
    by_hash: dict[str, str] = {}
    label_of: dict[str, str] = {}
    for name in sorted(labels):
        data = _read_image(root / name, name, spec, out)
        if data is None:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in by_hash:
            first = by_hash[digest]
            conflict = normalize(label_of[first]) != normalize(labels[name])
            out.duplicates.append({"name": name, "same_as": first, "label_conflict": conflict})
            continue
        by_hash[digest], label_of[name] = name, labels[name]
        out.samples.append(Sample(name, labels[name], data))
    out.ignored = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and p.name not in labels and p.name != LABELS_FILE
    )
    _check_charset(out.samples, normalize, allowed, where)
    if not out.samples:
        raise DataError(f"{where}: {root} has no readable labeled image")
    return out


def split(samples: list[Sample], source: FolderSource) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for s in samples:
        out[split_of(s.name, source.calib, source.val)].append(s)
    return out


def _labels(root: Path, source: FolderSource, where: str) -> dict[str, str]:
    mode = source.labels
    if mode == "auto":
        mode = "labels.json" if (root / LABELS_FILE).is_file() else "filename"
    if mode == "labels.json":
        return read_labels(root / LABELS_FILE)
    images = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    empty = [n for n in images if not label_from_name(n)]
    if empty:
        raise DataError(
            f"{where}: {len(empty)} file name(s) carry no label before '_' "
            f"({', '.join(empty[:SHOWN])}); rename them '<label>_<anything>.png' or add "
            f"{root / LABELS_FILE}"
        )
    return {n: label_from_name(n) for n in images}


def _read_image(path: Path, name: str, spec: Preprocess, out: Scan) -> bytes | None:
    """The file's bytes if the runtime can decode them; else a skip with its error code."""
    try:
        data = path.read_bytes()
        load_pixels(data, spec, name)  # the runtime's own decoder, the contract's limits
    except OSError as e:
        out.skipped.append({"name": name, "code": "E_INPUT", "detail": str(e.strerror)})
        return None
    except ImageError as e:
        out.skipped.append({"name": name, "code": e.code, "detail": e.detail[:200]})
        return None
    return data


def _check_charset(
    samples: list[Sample], normalize: Callable[[str], str], allowed: str, where: str
) -> None:
    # one character at a time: stripping would turn an allowed space into nothing
    charset = {ch for c in allowed for ch in (normalize(c) or c)}
    bad = {s.name: sorted(set(normalize(s.label)) - charset) for s in samples}
    bad = {name: chars for name, chars in bad.items() if chars}
    if not bad:
        return
    chars = sorted({c for cs in bad.values() for c in cs})
    shown = ", ".join(f"{n} {cs}" for n, cs in list(bad.items())[:SHOWN])
    raise DataError(
        f"{where}: {len(bad)} label(s) use characters {chars} outside the charset "
        f"({shown}{', ...' if len(bad) > SHOWN else ''}); add them to params.yaml 'charset' "
        "(a preset such as letters_digits, or 'chars:...'), set model.scoring.casefold: true if "
        "the site ignores case, or fix the labels"
    )
