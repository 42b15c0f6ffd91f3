"""The accuracy of every bench variant, set by set.

Accuracy comes from evaluate's eval.json and baselines' accuracy.json, except the bundle's,
which is measured here on every evaluation image through the runtime's whole fallback chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluate import EvalSets, score_sets
from ..progress import Progress, map_ordered, usable_cores
from ..records import BaselinesRecord, EvalRecord, SetAccuracy, VariantEval


def accuracy_table(
    evaluation: EvalRecord, baselines: BaselinesRecord | None
) -> dict[str, dict[str, SetAccuracy]]:
    """name -> set -> accuracy, CER, agreement, from the records that measured them."""
    pool: dict[str, VariantEval] = dict(evaluation.variants)
    if baselines is not None:
        pool.update(baselines.variants)
    return {
        name: {
            s: SetAccuracy(accuracy=r.accuracy, cer=r.cer, agreement=r.agreement, change=r.change)
            for s, r in v.sets.items()
        }
        for name, v in pool.items()
    }


def accuracy_sources(evaluation: EvalRecord) -> dict[str, str]:
    """Stages whose accuracy is another stage's texts (evaluate's exact-pass check): whose."""
    return {
        name: f"{v.texts_of}'s texts: the same on the first {v.checked_images} of each set"
        for name, v in evaluation.variants.items()
        if v.texts_of is not None
    }


def bundle_accuracy(
    bundle: Path, sets: EvalSets, scoring: Any, label: str, threads: int
) -> dict[str, dict[str, SetAccuracy]]:
    """The bundle as an app runs it (primary, then the fallback on unsure images) on every
    evaluation image: its own accuracy, not final's. bundle+fallback runs the same chain with
    the fallback loaded up front, which changes memory and timing, never a text
    (test_runtime checks it), so it shares the record."""
    from ocr_bundles_runtime import Recognizer

    rec = Recognizer.from_bundle(bundle)
    bar = Progress(f"{label}: bundle accuracy", sum(sets.sizes.values()))
    workers = max(1, usable_cores() // max(1, threads))  # the Recognizer is thread-safe
    preds = {
        s: map_ordered(lambda p: rec.predict(p).text, paths, bar, workers)
        for s, paths in sets.images.items()
    }
    bar.close()
    acc = {
        s: SetAccuracy(accuracy=r.accuracy, cer=r.cer, agreement=r.agreement)
        for s, r in score_sets(preds, sets.labels, None, scoring).items()
    }
    with_fallback = "fallback" in rec.spec.models
    return {"bundle": acc, **({"bundle+fallback": acc} if with_fallback else {})}
