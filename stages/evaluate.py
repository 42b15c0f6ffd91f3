"""The evaluation stage: every model of a build on the evaluation set, one shared
preprocessing and one CTC decode, scored against labels and against the reference."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import modelio
from .data import read_split
from .decode import decode
from .inference import Runtime, make_session
from .preprocess import Preprocess, preprocess_all
from .recipe import Recipe


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one row at a time."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(preds: list[str], labels: list[str]) -> dict[str, Any]:
    """Exact-match accuracy, character error rate and accuracy per label length."""
    if len(preds) != len(labels) or not labels:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    exact = [p == t for p, t in zip(preds, labels, strict=True)]
    errors = sum(edit_distance(p, t) for p, t in zip(preds, labels, strict=True))
    by_len: dict[int, list[bool]] = defaultdict(list)
    for ok, t in zip(exact, labels, strict=True):
        by_len[len(t)].append(ok)
    return {
        "accuracy": round(float(np.mean(exact)), 5),
        "cer": round(errors / max(1, sum(len(t) for t in labels)), 5),
        "by_length": {
            str(k): {"n": len(v), "accuracy": round(float(np.mean(v)), 5)}
            for k, v in sorted(by_len.items())
        },
    }


def agreement(preds: list[str], reference: list[str]) -> float:
    return round(float(np.mean([p == r for p, r in zip(preds, reference, strict=True)])), 5)


def predict(model_path: Path, xs: list[np.ndarray], rt: Runtime) -> tuple[list[str], float]:
    """Predictions and the median model-only latency (ms) over the inputs."""
    sess = make_session(model_path.read_bytes(), rt)
    name = sess.get_inputs()[0].name
    meta = sess.get_modelmeta().custom_metadata_map
    ctc = modelio.spec_from_metadata(meta, name, sess.get_outputs()[0].name)
    preds, times = [], []
    for x in xs:
        t0 = time.perf_counter()
        logits = sess.run(None, {name: x})[0]
        times.append(time.perf_counter() - t0)
        preds.append(decode(logits, ctc.charset, ctc.layout, ctc.blank).text)
    return preds, round(float(np.median(times)) * 1e3, 3)


def evaluate_model(
    model_path: Path,
    xs: list[np.ndarray],
    labels: list[str],
    ref: list[str] | None,
    rt: Runtime,
) -> tuple[dict[str, Any], list[str]]:
    preds, p50 = predict(model_path, xs, rt)
    out = {
        "size_mb": round(modelio.size_mb(model_path), 3),
        **score(preds, labels),
        "agreement": agreement(preds, ref) if ref is not None else 1.0,
        "model_p50_ms": p50,
    }
    return out, preds


def evaluate_build(
    target: str, source: Path, build: Path, data: Path, recipe: Recipe, reference: Preprocess
) -> dict[str, Any]:
    """Reference (source model, reference preprocessing), every stage model and the final one
    (recipe preprocessing), all on the same evaluation images."""
    items = read_split(data / "eval")
    images, labels = [p for p, _ in items], [t for _, t in items]
    rt = recipe.runtime
    ref, ref_preds = evaluate_model(
        source / "model.onnx", preprocess_all(images, reference), labels, None, rt
    )
    xs = preprocess_all(images, recipe.preprocess)
    variants: dict[str, Any] = {"reference": ref}
    stages = json.loads((build / "build.json").read_text())["stages"]
    for st in stages:
        variants[Path(st["file"]).stem], _ = evaluate_model(
            build / st["file"], xs, labels, ref_preds, rt
        )
    variants["final"] = {
        **variants[Path(stages[-1]["file"]).stem],
        "size_mb": round(modelio.size_mb(build / "model.onnx"), 3),
    }
    return {
        "target": target,
        "images": len(items),
        "threads": rt.intra_op_threads,
        "variants": variants,
    }
