"""The preprocess stage: what each preprocessing candidate costs and what it does to accuracy on
every evaluation set.

For the model's own contract ("contract") and every candidate in params.yaml
(`preprocess.candidates`, changes to the contract): median time per image (decode + convert +
resize + normalize, one pinned core), the resident memory its backend's imports add (a fresh
interpreter, so nothing else is loaded), and the reference model's exact-match accuracy on the
first `preprocess.images` images of each set. Recipes name their choice; the report shows it
next to the others, set by set, so a choice made on clean images is seen on the hard ones too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ocr_bundles_runtime.preprocess import Preprocess
from ocr_bundles_runtime.session import Runtime

from ..data.dataset import read_sets
from ..errors import PipelineError
from ..evaluate import EvalSets, eval_runtime, score_sets
from ..records import CandidateSet, PreprocessCandidate, PreprocessRecord
from ..scoring import Scoring


def probe(spec: Preprocess, images: list[Path]) -> dict[str, float]:
    """Time and import cost of one candidate, measured in a fresh pinned interpreter."""
    job = json.dumps({"spec": spec.as_dict(), "images": [str(p) for p in images]})
    out = subprocess.run(
        [sys.executable, "-m", "stages.measure.preprocess_probe", job],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise PipelineError(f"preprocess probe failed for {spec}: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measure(
    name: str, spec: Preprocess, sets: EvalSets, model: Path, scoring: Scoring
) -> PreprocessCandidate:
    preds = sets.predict(model, spec, eval_runtime(Runtime()), f"preprocess: {name}")
    scores = score_sets(preds, sets.labels, None, scoring)
    timing_images = next(iter(sets.images.values()))
    return PreprocessCandidate(
        name=name,
        settings=spec.as_dict(),
        **probe(spec, timing_images),
        sets={
            s: CandidateSet(images=r.images, accuracy=r.accuracy, cer=r.cer)
            for s, r in scores.items()
        },
    )


def run(
    candidates: dict[str, Preprocess],
    data: Path,
    sources: list[str],
    model_dir: Path,
    images: int,
    scoring: Scoring,
) -> PreprocessRecord:
    sets = EvalSets({s: items[:images] for s, items in read_sets(data, sources, "eval").items()})
    model = model_dir / "model.onnx"
    rows = [measure(n, s, sets, model, scoring) for n, s in candidates.items()]
    return PreprocessRecord(images=sets.sizes, candidates={r.name: r for r in rows})
