"""The preprocess stage: what each preprocessing candidate costs and what it does to accuracy.

For every candidate in params.yaml (`preprocess.candidates`): median time per image (decode +
convert + resize + normalize, one pinned core), the resident memory its backend's imports add
(a fresh interpreter, so nothing else is loaded), and the reference model's exact-match
accuracy and model time on the first `preprocess.images` evaluation images. Recipes name their
choice; the report shows it next to the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .data import read_split
from .evaluate import predict, score
from .inference import Runtime
from .preprocess import Preprocess, preprocess_all


def probe(spec: Preprocess, images: list[Path]) -> dict[str, float]:
    """Time and import cost of one candidate, measured in a fresh pinned interpreter."""
    job = json.dumps({"spec": spec.as_dict(), "images": [str(p) for p in images]})
    out = subprocess.run(
        [sys.executable, "-m", "stages.preprocess_probe", job], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"preprocess probe failed for {spec}: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measure(
    name: str, spec: Preprocess, images: list[Path], labels: list[str], model: Path
) -> dict[str, Any]:
    preds, model_p50 = predict(model, preprocess_all(images, spec), Runtime(intra_op_threads=1))
    return {
        "name": name,
        "settings": spec.as_dict(),
        "model_p50_ms": model_p50,
        **probe(spec, images),
        **{k: v for k, v in score(preds, labels).items() if k != "by_length"},
    }


def run(candidates: dict[str, Preprocess], data: Path, model: Path, images: int) -> dict[str, Any]:
    items = read_split(data / "eval")[:images]
    paths, labels = [p for p, _ in items], [t for _, t in items]
    rows = [measure(n, s, paths, labels, model) for n, s in candidates.items()]
    return {"images": len(items), "model": str(model), "candidates": {r["name"]: r for r in rows}}
