"""What a build's decisions see: every source's calib and val splits, preprocessed for the
class, less the sources the source model cannot read.

An accuracy-driven choice on images the model reads at 7 % follows noise: on a text-line model
fed captchas, quantize_to_tolerance searched for 14.5 minutes and failed. So the build first
reads the first READ_IMAGES of each source's val split with its input model; a source read
below params.yaml `data.min_accuracy` is left out of calibration and validation (the build
record says so; evaluation still reports it), and with no source left the build stops and asks
for the user's own labeled images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.preprocess import preprocess_all
from ocr_bundles_runtime.session import Runtime, make_session, run

from . import modelio
from .data.dataset import SUMMARY_FILE, interleave, read_sets
from .errors import DataError
from .recipe import Recipe
from .records import SourceSummary, SourceUse, read_record
from .registry import PassContext
from .scoring import Scoring, hits

# val images per source the readability check reads: a 1-point resolution, far finer than any
# useful threshold, for ~3 s per source on ddddocr's model
READ_IMAGES = 100


Split = dict[str, list[tuple[np.ndarray, str]]]  # per source: (preprocessed image, label)


def pass_context(
    data: Path, sources: list[str], recipe: Recipe, allowed_chars: str, scoring: Scoring
) -> PassContext:
    """The PassContext of `sources`, preprocessed as the class preprocesses."""
    calib, val = (_read(data, sources, split, recipe) for split in ("calib", "val"))
    return _context(calib, val, recipe, allowed_chars, scoring)


def decision_context(
    model: onnx.ModelProto,
    data: Path,
    sources: list[str],
    recipe: Recipe,
    allowed_chars: str,
    scoring: Scoring,
    min_accuracy: float,
    params_file: str = "params.yaml",
) -> tuple[PassContext, dict[str, SourceUse]]:
    """The context of the sources `model` can read, and every source's readability."""
    calib, val = (_read(data, sources, split, recipe) for split in ("calib", "val"))
    uses = {
        s: use.model_copy(update=_labels(data / s))
        for s, use in readability(model, val, recipe.runtime, scoring, min_accuracy).items()
    }
    kept = [s for s in sources if uses[s].used]
    if not kept:
        read = ", ".join(f"{s} {u.accuracy:.0%}" for s, u in uses.items())
        raise DataError(
            f"the source model reads every data source below {params_file} data.min_accuracy "
            f"{min_accuracy:.0%} ({read} of the first val images): decisions on them would "
            "follow noise. Add your own labeled images as a folder source (data.folders, "
            "README 'Another CTC recognizer'), or lower data.min_accuracy if these rates are "
            "what the model is for"
        )
    for s in sources:
        if not uses[s].used:
            print(
                f"build: source {s} left out of the decisions: the source model reads "
                f"{uses[s].accuracy:.0%} of it, below data.min_accuracy {min_accuracy:.0%}",
                flush=True,
            )
    context = _context(
        {s: calib[s] for s in kept}, {s: val[s] for s in kept}, recipe, allowed_chars, scoring
    )
    return context, uses


def readability(
    model: onnx.ModelProto, val: Split, rt: Runtime, scoring: Scoring, min_accuracy: float
) -> dict[str, SourceUse]:
    """Per source: the model's accuracy on the first READ_IMAGES val images, and whether that
    reaches `min_accuracy` (a source without val images cannot be judged and is kept)."""
    spec = modelio.spec(model)
    session = make_session(model.SerializeToString(), rt)
    uses = {}
    for name, items in val.items():
        items = items[:READ_IMAGES]
        texts = [
            decode(run(session, x), spec.charset, spec.layout, spec.blank).text for x, _ in items
        ]
        right = hits(texts, [label for _, label in items], scoring)
        accuracy = round(float(np.mean(right)), 4) if right else None
        used = accuracy is None or accuracy >= min_accuracy
        uses[name] = SourceUse(accuracy=accuracy, images=len(items), used=used)
    return uses


def _labels(source: Path) -> dict[str, Any]:
    """What the source's summary says its labels are drawn from."""
    summary = read_record(source / SUMMARY_FILE, SourceSummary)
    return {"kind": summary.kind, "alphabet": summary.alphabet, "allowed": summary.allowed}


def _read(data: Path, sources: list[str], split: str, recipe: Recipe) -> Split:
    return {
        s: list(zip(preprocess_all([p for p, _ in v], recipe.preprocess), [t for _, t in v],
                    strict=True))
        for s, v in read_sets(data, sources, split).items()
    }  # fmt: skip


def _context(calib: Split, val: Split, recipe: Recipe, allowed: str, scoring: Scoring):
    """Calibration interleaved, so any prefix draws from every source; validation per source."""
    return PassContext(
        calibration=interleave([[x for x, _ in v] for v in calib.values()]),
        validation=val,
        allowed_chars=allowed,
        runtime=recipe.runtime,
        input=recipe.preprocess,
        scoring=scoring,
    )
