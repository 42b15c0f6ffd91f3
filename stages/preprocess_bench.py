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
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import modelio
from .data import read_split
from .decode import decode
from .evaluate import score
from .inference import Runtime, make_session
from .preprocess import Preprocess, preprocess


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
    ctc = modelio.spec(modelio.load(model))
    sess = make_session(model.read_bytes(), Runtime(intra_op_threads=1))
    inp = sess.get_inputs()[0].name
    preds, model_ms = [], []
    for path in images:
        x = preprocess(path, spec)
        t0 = time.perf_counter()
        logits = sess.run(None, {inp: x})[0]
        model_ms.append(time.perf_counter() - t0)
        preds.append(decode(logits, ctc.charset, ctc.layout, ctc.blank).text)
    return {
        "name": name,
        "settings": spec.as_dict(),
        "model_p50_ms": round(float(np.median(model_ms)) * 1e3, 3),
        **probe(spec, images),
        **{k: v for k, v in score(preds, labels).items() if k != "by_length"},
    }


def run(candidates: dict[str, Preprocess], data: Path, model: Path, images: int) -> dict[str, Any]:
    items = read_split(data / "eval")[:images]
    paths, labels = [p for p, _ in items], [t for _, t in items]
    rows = [measure(n, s, paths, labels, model) for n, s in candidates.items()]
    return {"images": len(items), "model": str(model), "candidates": {r["name"]: r for r in rows}}
