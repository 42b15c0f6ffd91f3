"""The build stage: apply a recipe's passes in order, checking each against its input.

An exact pass whose outputs leave the recipe's tolerance fails the build (simplifiers have
shipped output-changing bugs); a lossy pass has its divergence recorded instead. Outputs are
compared on the classes both models share; for a probabilities output the input's kept
columns are renormalized first, since a pruned Softmax renormalizes over the kept classes.

build/<C>/model/           (the DVC output later stages depend on; byte-identical on rebuild)
  stages/NN-<pass>.onnx    every pass's output
  model.onnx, charset.json the final model
  recipe.json              the resolved recipe and the final model's contract (what evaluate,
                           bundle and bench read)
  build.json               records.BuildRecord: each pass's report (what it decided)
build/<C>/timings.json     seconds per pass (nothing depends on it)
build/<C>/checks.json      records.CheckRecord: each stage's divergence from its input, on this
                           machine's float kernels (the report reads it; nothing else does)

Nothing in model/ depends on the build CPU's float rounding: the decisions come from integer-exact
int8 kernels and snapped calibration ranges, so an AVX2 and an AVX-512 machine write the same
bytes; what does carry the CPU's last digits (divergences, seconds) lives beside model/.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import ValidationError

from ocr_bundles_runtime.session import quiet_cpu_session, run

from . import modelio, registry
from .atomic import atomic_dir, write_json
from .contract import CHARSET_FILE, Contract
from .errors import PassError
from .profiles.host import host_facts
from .recipe import Equivalence, Recipe
from .records import (
    BUILD_FILE,
    CHECKS_FILE,
    RECIPE_FILE,
    BuildRecord,
    CheckRecord,
    RecipeFile,
    RecordError,
    SourceUse,
    StageCheck,
    StageRecord,
    read_record,
    write_record,
)
from .yamlio import field_path

LIBRARIES = ("onnx", "onnxruntime", "onnxsim", "numpy")
TIMINGS_FILE = "timings.json"


@dataclass
class StageResult:
    index: int
    name: str
    model: onnx.ModelProto = field(repr=False)
    seconds: float
    exact: bool
    divergence: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)  # what the pass chose and why
    measured: dict[str, Any] = field(default_factory=dict)  # report fields of this CPU

    @property
    def filename(self) -> str:
        return f"{self.index:02d}-{self.name}.onnx"


def outputs(
    model: onnx.ModelProto, tensors: list[np.ndarray], who: str = "the source model"
) -> list[np.ndarray]:
    """The model's outputs on `tensors`; a model onnxruntime cannot load or run is a PassError
    naming `who` produced it, never a raw traceback."""
    try:
        sess = quiet_cpu_session(model.SerializeToString(), threads=2)
        return [run(sess, x) for x in tensors]
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise PassError(
            who,
            f"onnxruntime cannot load or run its output on the calibration images "
            f"({type(e).__name__}: {first})",
        ) from e


def kept_columns(old: modelio.CtcSpec, new: modelio.CtcSpec) -> list[int] | None:
    """For each class of `new`, its column in `old` (None when the charsets are equal): the
    blank maps to the blank, every other entry to the next unused occurrence of its string,
    so a dictionary that lists a character twice maps both copies."""
    if old.charset == new.charset:
        return None
    free: dict[str, list[int]] = {}
    for i, c in enumerate(old.charset):
        if i != old.blank:
            free.setdefault(c, []).append(i)
    cols = []
    for i, c in enumerate(new.charset):
        if i == new.blank:
            cols.append(old.blank)
        elif free.get(c):
            cols.append(free[c].pop(0))
        else:
            raise PassError("build", f"class {c!r} of the new model is not in its input's charset")
    return cols


def comparable(before: onnx.ModelProto, after: onnx.ModelProto, ref: list[np.ndarray]) -> list:
    """`before`'s outputs restricted to the classes `after` kept (renormalized when they are
    probabilities), so both models can be compared value for value."""
    old, new = modelio.spec(before), modelio.spec(after)
    cols = kept_columns(old, new)
    if cols is None:
        return ref
    out = [r[..., cols] for r in ref]
    if new.kind == "probabilities":
        out = [r / r.sum(axis=-1, keepdims=True) for r in out]
    elif ends_in(after, "LogSoftmax"):  # log-probabilities renormalize by a shift per row
        out = [log_softmax(r) for r in out]
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def ends_in(model: onnx.ModelProto, op_type: str) -> bool:
    """Whether the output is produced by `op_type`, looking through shape-only ops."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in ("Identity", "Reshape", "Transpose", "Squeeze"):
        node = producers.get(node.input[0])
    return node is not None and node.op_type == op_type


def dropped_best(before: onnx.ModelProto, after: onnx.ModelProto, ref: list[np.ndarray]) -> float:
    """Share of time steps whose best class in the input model is a class the new model no
    longer has: agreement on the kept columns cannot show those."""
    cols = kept_columns(modelio.spec(before), modelio.spec(after))
    if cols is None:
        return 0.0
    kept = np.zeros(ref[0].shape[-1], bool)
    kept[cols] = True
    steps = [~kept[r.argmax(-1)] for r in ref]
    return float(sum(int(s.sum()) for s in steps) / sum(s.size for s in steps))


def divergence(ref: list[np.ndarray], new: list[np.ndarray]) -> dict[str, float]:
    """Max abs/rel output change and argmax agreement (inputs already made comparable)."""
    abs_err, rel_err, agree, steps = 0.0, 0.0, 0, 0
    for a, b in zip(ref, new, strict=True):
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
        raise PassError("build", "no calibration images to check the passes with (data/*/calib)")
    results: list[StageResult] = []
    current, current_out = model, outputs(model, probe, "build")
    for i, step in enumerate(recipe.passes, start=1):
        spec = registry.get(step.name)
        print(f"build: pass {i}/{len(recipe.passes)} {step.name} ...", flush=True)
        t0 = time.perf_counter()
        new, report = pop_reports(spec.fn(current, step.options, context))
        seconds = time.perf_counter() - t0
        idle = report.get(step.name)
        if isinstance(idle, dict) and registry.NOTHING_TO_DO in idle:
            note = f"did nothing: {idle[registry.NOTHING_TO_DO]}"
            print(f"build: pass {i}/{len(recipe.passes)} {step.name} {note}", flush=True)
        new_out = outputs(new, probe, step.name)
        ref = comparable(current, new, current_out)
        if spec.exact:
            check_exact(step.name, ref, new_out, recipe.equivalence)
        div = divergence(ref, new_out) | {"dropped_best": dropped_best(current, new, current_out)}
        report, measured = split_measured(report, spec)
        results.append(StageResult(i, step.name, new, seconds, spec.exact, div, report, measured))
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


def versions() -> dict[str, str]:
    return {lib: metadata.version(lib) for lib in LIBRARIES}


def split_measured(
    report: dict[str, Any], spec: registry.PassSpec
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pass's report without its measured fields, and those fields (PassSpec.measured)."""
    mine = report.get(spec.name)
    if not spec.measured or not isinstance(mine, dict):
        return report, {}
    kept = {k: v for k, v in mine.items() if k not in spec.measured}
    measured = {k: v for k, v in mine.items() if k in spec.measured}
    return {**report, spec.name: kept}, ({spec.name: measured} if measured else {})


def build_record(
    target: str, results: list[StageResult], folder: Path, sources: dict[str, SourceUse]
) -> BuildRecord:
    return BuildRecord(
        target=target,
        sources=sources,
        stages=[
            StageRecord(
                index=r.index,
                pass_name=r.name,
                file=f"stages/{r.filename}",
                size_mb=round(modelio.size_mb(folder / "stages" / r.filename), 3),
                exact=r.exact,
                report=r.report,
            )
            for r in results
        ],
    )


def check_record(target: str, results: list[StageResult]) -> CheckRecord:
    return CheckRecord(
        target=target,
        machine=host_facts(),
        stages=[
            StageCheck(
                file=f"stages/{r.filename}",
                **{k: round(v, 6) for k, v in r.divergence.items()},
                measured=r.measured,
            )
            for r in results
        ],
    )


def write_build(
    out: Path,
    recipe: Recipe,
    results: list[StageResult],
    target: str,
    sources: dict[str, SourceUse] | None = None,
    *,
    contract: Contract,
) -> None:
    """Every stage model, the final model and the records (with which data sources the
    decisions used) into `out` atomically; the pass timings and divergences beside it, in
    `out`'s parent."""
    with atomic_dir(out) as tmp:
        for r in results:
            modelio.save(r.model, tmp / "stages" / r.filename)
        final = results[-1].model
        modelio.save(final, tmp / "model.onnx")
        spec = modelio.spec(final)
        write_json(tmp / CHARSET_FILE, spec.charset)
        record = RecipeFile(
            target=target,
            recipe=recipe.resolved(),
            contract=contract.for_model(spec.output_name, len(spec.charset), spec.blank).dump(),
            versions=versions(),
        )
        write_record(tmp / RECIPE_FILE, record)
        write_record(tmp / BUILD_FILE, build_record(target, results, tmp, sources or {}))
    write_json(
        out.parent / TIMINGS_FILE,
        {"target": target, "seconds": {r.filename: round(r.seconds, 2) for r in results}},
    )
    write_record(out.parent / CHECKS_FILE, check_record(target, results))


def read_recipe(build_model_dir: Path) -> Recipe:
    """The resolved recipe the build saved: downstream stages read this, never the YAML."""
    from . import passes  # noqa: F401 - registers the passes the recipe names

    path = Path(build_model_dir) / RECIPE_FILE
    if not path.is_file():
        raise RecordError(f"{path}: missing; run the build stage first")
    return Recipe.from_resolved(read_record(path, RecipeFile).recipe, str(path))


def read_build_contract(build_model_dir: Path) -> Contract:
    """The contract of the build's final model, as recipe.json holds it: what evaluate scores
    with and the bundle's manifest carries to every runtime."""
    path = Path(build_model_dir) / RECIPE_FILE
    if not path.is_file():
        raise RecordError(f"{path}: missing; run the build stage first")
    try:
        return Contract.model_validate(read_record(path, RecipeFile).contract)
    except ValidationError as e:  # the first wrong field, by its path
        first = e.errors()[0]
        field = field_path(("contract", *first["loc"]))
        raise RecordError(
            f"{path}: not a valid contract ({field}: {first['msg']}); rerun the build"
        ) from None


def decided_on(build_model_dir: Path) -> list[str] | None:
    """The data sources the build's decisions used: the sets accuracy budgets judge (None: the
    build recorded no readability check, so every set)."""
    sources = read_record(Path(build_model_dir) / BUILD_FILE, BuildRecord).sources
    return [s for s, use in sources.items() if use.used] if sources else None
