"""The build stage: apply a recipe's passes in order, checking each against its input.

An exact pass whose outputs leave the recipe's tolerance fails the build (simplifiers have
shipped output-changing bugs); a lossy pass has its divergence recorded instead.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import modelio, registry
from .errors import PassError
from .inference import Runtime, make_session, run
from .modelio import swap_into_place
from .recipe import Equivalence, Recipe

LIBRARIES = ("onnx", "onnxruntime", "onnxsim", "numpy")


@dataclass
class StageResult:
    index: int
    name: str
    model: onnx.ModelProto = field(repr=False)
    seconds: float
    divergence: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)  # what the pass chose and why

    @property
    def filename(self) -> str:
        return f"{self.index:02d}-{self.name}.onnx"


def outputs(model: onnx.ModelProto, tensors: list[np.ndarray]) -> list[np.ndarray]:
    sess = make_session(model.SerializeToString(), Runtime(intra_op_threads=2))
    return [run(sess, x) for x in tensors]


def divergence(
    before: onnx.ModelProto, after: onnx.ModelProto, ref: list[np.ndarray], new: list[np.ndarray]
) -> dict[str, float]:
    """Max abs/rel logit change and argmax agreement on the classes both models share."""
    cols = _shared_columns(before, after)
    abs_err, rel_err, agree, steps = 0.0, 0.0, 0, 0
    for a, b in zip(ref, new, strict=True):
        a = a[..., cols]
        if a.shape != b.shape:
            raise PassError("build", f"output shape changed from {a.shape} to {b.shape}")
        diff = np.abs(a - b)
        abs_err = max(abs_err, float(diff.max()))
        rel_err = max(rel_err, float((diff / (np.abs(a) + 1e-6)).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        steps += a.argmax(-1).size
    return {"max_abs_diff": abs_err, "max_rel_diff": rel_err, "argmax_agreement": agree / steps}


def check_exact(name: str, a: list[np.ndarray], b: list[np.ndarray], eq: Equivalence) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape or not np.allclose(x, y, rtol=eq.rtol, atol=eq.atol):
            worst = float(np.abs(x - y).max()) if x.shape == y.shape else float("inf")
            raise PassError(
                name,
                f"changed the outputs on calibration image {i} (max abs diff {worst:.3g} > "
                f"atol {eq.atol} + rtol {eq.rtol}); this pass is tagged exact. Raise "
                "equivalence.atol/rtol in the recipe only if the change is understood, "
                "or remove the pass",
            )


def run_passes(
    model: onnx.ModelProto, recipe: Recipe, context: registry.PassContext
) -> list[StageResult]:
    """Apply every pass; each result keeps its model, timing and divergence from its input."""
    probe = context.calibration[: recipe.equivalence.images]
    if not probe:
        raise PassError("build", "no calibration images to check the passes with (data/calib)")
    results: list[StageResult] = []
    current, current_out = model, outputs(model, probe)
    for i, step in enumerate(recipe.passes, start=1):
        spec = registry.get(step.name)
        t0 = time.perf_counter()
        new, report = pop_reports(spec.fn(current, step.options, context))
        seconds = time.perf_counter() - t0
        new_out = outputs(new, probe)
        div = divergence(current, new, current_out, new_out)
        if spec.exact:
            cols = _shared_columns(current, new)
            check_exact(step.name, [o[..., cols] for o in current_out], new_out, recipe.equivalence)
        results.append(StageResult(i, step.name, new, seconds, div, report))
        current, current_out = new, new_out
    return results


def pop_reports(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Move `report.*` metadata a pass attached into the build record, out of the model."""
    reports = {
        p.key[len("report.") :]: json.loads(p.value)
        for p in model.metadata_props
        if p.key.startswith("report.")
    }
    if reports:
        kept = [p for p in model.metadata_props if not p.key.startswith("report.")]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
    return model, reports


def _shared_columns(before: onnx.ModelProto, after: onnx.ModelProto) -> Any:
    old_cs, new_cs = modelio.spec(before).charset, modelio.spec(after).charset
    return slice(None) if old_cs == new_cs else [old_cs.index(c) for c in new_cs]


def versions() -> dict[str, str]:
    return {lib: metadata.version(lib) for lib in LIBRARIES}


def write_build(out: Path, recipe: Recipe, results: list[StageResult], target: str) -> None:
    """Write every stage model, the final model and the records into `out` atomically."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for r in results:
            modelio.save(r.model, tmp / "stages" / r.filename)
        final = results[-1].model
        modelio.save(final, tmp / "model.onnx")
        modelio.write_json(tmp / "charset.json", modelio.spec(final).charset)
        modelio.write_json(
            tmp / "recipe.json",
            {"target": target, "recipe": recipe.resolved(), "versions": versions()},
        )
        modelio.write_json(
            tmp / "build.json",
            {
                "target": target,
                "stages": [
                    {
                        "index": r.index,
                        "pass": r.name,
                        "file": f"stages/{r.filename}",
                        "size_mb": round(modelio.size_mb(tmp / "stages" / r.filename), 3),
                        "seconds": round(r.seconds, 2),
                        **{k: round(v, 6) for k, v in r.divergence.items()},
                        **({"report": r.report} if r.report else {}),
                    }
                    for r in results
                ],
            },
        )
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
