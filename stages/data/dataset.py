"""The on-disk dataset format every source is written in, and what later stages read.

data/<source>/
  calib/  val/  eval/     images + labels.json ({file name: label}) each
  summary.json            sizes per split, skipped and duplicate images (see records.SourceSummary)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ..errors import DataError

LABELS_FILE = "labels.json"
SUMMARY_FILE = "summary.json"
SPLITS = ("calib", "val", "eval")
# Fixed PNG settings: same pixels must always give the same bytes (no metadata is written).
_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}


class Sample(NamedTuple):
    name: str  # file name inside the split folder
    label: str
    data: bytes  # the image file's bytes


def eval_only_splits(raw: Any, zero: float) -> Any:
    """A source's raw params with `eval_only`: no calib or val split (0 unless given, refused if
    not 0), so no decision can see it; other params as they are."""
    if not isinstance(raw, dict) or not raw.get("eval_only"):
        return raw
    given = {k: raw[k] for k in ("calib", "val") if raw.get(k)}
    if given:
        raise ValueError(
            f"eval_only sources have no calibration or validation images, but {given} is "
            "set; remove it (or set it to 0), or drop eval_only"
        )
    return {**raw, "calib": zero, "val": zero}


def png_bytes(img: Image.Image) -> bytes:
    """Encode with fixed settings so equal pixels always give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, **_PNG_OPTIONS)
    return buf.getvalue()


def image_name(index: int) -> str:
    """File name of generated sample `index` inside a split directory."""
    return f"{index:05d}.png"


def write_split(directory: Path, samples: Iterable[Sample]) -> int:
    """Write the images and labels.json into `directory` (inside an atomic_dir); returns the
    count."""
    directory.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    for s in samples:
        if not isinstance(s.label, str) or not s.label:
            raise DataError(f"{s.name}: label must be a non-empty string, got {s.label!r}")
        if Path(s.name).name != s.name or s.name == LABELS_FILE or s.name in labels:
            raise DataError(f"{s.name!r}: not a plain, unique image file name")
        (directory / s.name).write_bytes(s.data)
        labels[s.name] = s.label
    text = json.dumps(labels, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    (directory / LABELS_FILE).write_text(text, encoding="utf-8")
    return len(labels)


def read_split(directory: Path) -> list[tuple[Path, str]]:
    """(image path, label) pairs of a split written by `write_split`, sorted by file name."""
    directory = Path(directory)
    labels = read_labels(directory / LABELS_FILE)
    pairs = []
    for name in sorted(labels):
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path}: image listed in {LABELS_FILE} is missing")
        pairs.append((path, labels[name]))
    return pairs


def read_labels(path: Path) -> dict[str, str]:
    """A labels.json: {plain file name: non-empty label}; DataError naming the file otherwise."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; not a dataset split directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable labels file: {exc}") from None
    if not isinstance(labels, dict):
        raise DataError(f"{path}: expected a JSON object of file name -> label")
    for name, label in labels.items():
        if Path(name).name != name or not name:
            raise DataError(f"{path}: entry {name!r} is not a plain file name")
        if not isinstance(label, str) or not label:
            raise DataError(f"{path}: label of {name!r} must be a non-empty string")
    return labels


def read_sets(data: Path, sources: list[str], split: str) -> dict[str, list[tuple[Path, str]]]:
    """One split of every source, by source name, in the order params.yaml lists them."""
    return {name: read_split(data / name / split) for name in sources}


def interleave(lists: list[list]) -> list:
    """[a0, b0, a1, b1, ...]: any prefix draws from every source."""
    out, longest = [], max((len(x) for x in lists), default=0)
    for i in range(longest):
        out.extend(x[i] for x in lists if i < len(x))
    return out
