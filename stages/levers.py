"""The levers stage: what each quantization option buys, measured beside the shipped model.

params.yaml `levers.variants.<class>.<name>` patches the class's pass options as an override
does (on the resolved recipe the build wrote, so a patch that changes calibrate_method away
from percentile also sets percentile back to its default). Each variant is built from the
source model with the class's own decision data, exactly as the build builds; a variant whose
gate cannot be met keeps the pass's message, which names the best numbers it found.

Every row, the shipped model first, is compared with the float model the class quantizes (the
input of its first lossy pass, as built): agreement and flips both ways on every validation set
(what decisions saw) and on every evaluation set (which no decision saw), accuracy against that
model's, size, and the median warm time per image on this machine beside the float model's:
every model in the same process, in `timing_rounds` interleaved rounds over the first
`timing_images` of the first val set, with the int8 kernels the shipped .ort runs
(`int8_kernels: fast`; the texts use the recipe's kernels, as evaluate does).

Variants are built and scored in worker processes, one per usable core (most of their time
is 1-thread sessions, the class's runtime): each worker runs exactly what the stage would run
alone, so the rows do not depend on the core count; the timing rounds run after, alone.

The float model itself is scored with its weights slightly changed (stages/perturb.py: in
float16, and times 1 + a seeded random `levers.weight_noise`), not timed: how many of its texts
any small change flips on each set, the floor under every variant's agreement there.

The shipped model's static int8 group is also scored in parts (stages/quant_split.py: int8
weights with float activations, int8 activations with float weights, then the activations of
one producing op type float at a time), not timed: which part costs the agreement, and so which
levers can win it back.

metrics/levers/<C>.json: records.LeverRecord, read by the report's class pages.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocr_bundles_runtime.session import Runtime, make_session, run

from . import modelio
from .build import BUILD_FILE, read_recipe, run_passes
from .contract import read_contract
from .data.dataset import read_sets
from .decision_data import decision_context
from .errors import PassError
from .evaluate import EvalSets, eval_runtime, predict
from .measure.machine import machine_info
from .params import Params
from .passes._ort_quant import working_copy
from .perturb import fp16_rounded, weight_noise
from .progress import usable_cores
from .quant_split import (
    GRAPH_INPUT,
    activation_producers,
    activations_only,
    float_after,
    weights_only,
)
from .recipe import Recipe, patched
from .records import BuildRecord, LeverRecord, LeverRow, LeverSet, QatRecord, read_record
from .registry import PassContext
from .scoring import Scoring, flips, score

Texts = dict[str, list[str]]
Sets = dict[str, tuple[list[np.ndarray], list[str]]]  # per set: tensors, labels
WARMUP = 10
FLOAT = "\0float"  # the float model's key among the timed ones: no variant name can equal it
WEIGHTS_ONLY = "int8 weights only"  # the shipped static group's halves (Scorer.split)
ACTIVATIONS_ONLY = "int8 activations only"


FP16 = "float model, weights in float16"  # the fragility rows (Scorer.fragility)


def noise_name(relative: float) -> str:
    return f"float model, each weight ± {100 * relative:g} % at random"


def float_after_name(kind: str) -> str:
    """The split row with the activations `kind` produces float (quant_split.float_after)."""
    return f"{kind} float" if kind == GRAPH_INPUT else f"{kind} outputs float"


def float_stage(record: BuildRecord, build: Path, source: Path) -> Path:
    """The float model the class quantizes: the input of its first lossy pass (the source
    model when that pass is the first), or the final model when no pass is lossy."""
    for i, st in enumerate(record.stages):
        if not st.exact:
            return build / record.stages[i - 1].file if i else source
    return build / "model.onnx"


def shared_prefix(recipe: Recipe, variant: Recipe) -> int:
    """How many leading passes a variant shares with the class's recipe (name and options):
    the build's stage files already hold their outputs. At least the last pass reruns."""
    n = 0
    for a, b in zip(recipe.passes, variant.passes, strict=False):
        if a != b:
            break
        n += 1
    return min(n, len(variant.passes) - 1)


def shared_reports(record: BuildRecord, k: int) -> dict[str, Any]:
    """The reports of the build's first k passes: what a variant sharing them inherits (the
    nodes its quantizer kept float, what its fine-tune did)."""
    return {key: v for st in record.stages[:k] for key, v in st.report.items()}


def decision_sets(context: PassContext) -> Sets:
    return {s: ([x for x, _ in v], [t for _, t in v]) for s, v in context.validation.items()}


def evaluation_sets(sets: EvalSets, recipe: Recipe, images: int | None) -> Sets:
    tensors = sets.tensors(recipe.preprocess)
    return {s: (tensors[s][:images], sets.labels[s][:images]) for s in tensors}


def texts(model: Path, sets: Sets, rt: Runtime) -> Texts:
    return {s: predict(model, xs, rt) for s, (xs, _) in sets.items()}


def compare(preds: Texts, ref: Texts, sets: Sets, scoring: Scoring) -> dict[str, LeverSet]:
    """Per set: the variant's texts against the float model's and the labels."""
    out = {}
    for s, (_, labels) in sets.items():
        mine, theirs = score(preds[s], labels, scoring), score(ref[s], labels, scoring)
        change = flips(preds[s], ref[s], labels, scoring)
        out[s] = LeverSet(
            images=len(labels),
            accuracy=mine["accuracy"],
            accuracy_delta_pts=round(100 * (mine["accuracy"] - theirs["accuracy"]), 3),
            **change,
        )
    return out


def interleaved_ms(
    models: dict[str, bytes], xs: list[np.ndarray], rt: Runtime, rounds: int
) -> dict[str, float]:
    """Median milliseconds per image of every model, timed in `rounds` interleaved rounds (each
    round times every model on every image of `xs`, in an order rotated per round), after
    WARMUP runs each, with the int8 kernels a bundle's .ort runs (the exact-kernel rewrite
    applies only when an .onnx loads). Models that are timed one after the other are not
    comparable on a shared machine: a slow moment falls on one of them only."""
    fast = dataclasses.replace(rt, int8_kernels="fast")
    sessions = {name: make_session(data, fast) for name, data in models.items()}
    for session in sessions.values():
        for x in xs[:WARMUP]:
            run(session, x)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for x in xs:
                t0 = time.perf_counter()
                run(sessions[name], x)
                times[name].append(1000 * (time.perf_counter() - t0))
    return {name: round(statistics.median(ts), 3) for name, ts in times.items()}


def float_nodes(report: dict[str, Any]) -> list[str]:
    """The nodes a quantization pass's report says it kept float."""
    kept = {n for r in report.values() if isinstance(r, dict) for n in r.get("float_nodes", [])}
    return sorted(kept)


class Scorer:
    """One class's float reference and sets; rows built and scored against them, then every
    model timed together (`timed`)."""

    def __init__(
        self, float_path: Path, recipe: Recipe, val: Sets, evals: Sets, scoring: Scoring,
        timing_images: int,
    ) -> None:  # fmt: skip
        self.recipe, self.val, self.evals, self.scoring = recipe, val, evals, scoring
        self.rt = eval_runtime(recipe.runtime)
        self.float_path = float_path
        self.timing = next(iter(val.values()))[0][:timing_images]  # every class has val sets
        self.ref_val = texts(self.float_path, val, self.rt)
        self.ref_eval = texts(self.float_path, evals, self.rt)
        self.models: dict[str, bytes] = {}  # each built row's model, timed at the end

    def row(
        self, name: str, patch: dict[str, Any], model: onnx.ModelProto, kept: list[str],
        timed: bool = True,
    ) -> LeverRow:  # fmt: skip
        data = model.SerializeToString()
        if timed:
            self.models[name] = data
        with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            val, evals = texts(path, self.val, self.rt), texts(path, self.evals, self.rt)
        return LeverRow(
            name=name,
            patch=patch,
            size_mb=size_mb(data),
            float_nodes=kept,
            val=compare(val, self.ref_val, self.val, self.scoring),
            eval=compare(evals, self.ref_eval, self.evals, self.scoring),
        )

    def split(self, model: onnx.ModelProto) -> list[LeverRow]:
        """The model's static int8 group in parts (quant_split), scored, not timed (their
        kernels are float ones); none without a static group. The float model's nodes are
        named as the quantizers name them, so every quantized node finds its twin."""
        if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            return []
        rows = [self.row(WEIGHTS_ONLY, {}, weights_only(model), [], timed=False)]
        try:
            twin = activations_only(model, working_copy(onnx.load(self.float_path)))
            rows.append(self.row(ACTIVATIONS_ONLY, {}, twin, [], timed=False))
        except ValueError as e:
            rows.append(LeverRow(name=ACTIVATIONS_ONLY, patch={}, error=str(e)))
        return rows + [
            self.row(float_after_name(kind), {}, float_after(model, kind), [], timed=False)
            for kind in activation_producers(model)
        ]

    def fragility(self, noise: tuple[float, ...], seed: int) -> list[LeverRow]:
        """The float model itself with its weights slightly changed (stages/perturb.py), scored
        like the rows, not timed: the texts any small change of the weights flips, per set."""
        base = onnx.load(self.float_path)
        changed = {FP16: fp16_rounded(base)}
        changed |= {noise_name(r): weight_noise(base, r, seed) for r in noise}
        return [self.row(name, {}, m, [], timed=False) for name, m in changed.items()]

    def timed(self, rows: list[LeverRow], rounds: int) -> dict[str, Any]:
        """The record's fields: every built row's warm ms and the float model's, measured in
        the same interleaved rounds."""
        float_data = self.float_path.read_bytes()
        ms = interleaved_ms(
            {FLOAT: float_data, **self.models}, self.timing, self.recipe.runtime, rounds
        )
        return dict(
            float_model=self.float_path.name,
            float_size_mb=size_mb(float_data),
            float_warm_ms=ms[FLOAT],
            rows=[r.model_copy(update={"warm_ms": ms.get(r.name)}) for r in rows],
        )


def size_mb(data: bytes) -> float:
    return round(len(data) / 1e6, 3)


def measure_class(
    target: str,
    source: Path,
    build: Path,
    context: PassContext,
    sets: EvalSets,
    variants: dict[str, dict[str, Any]],
    scoring: Scoring,
    eval_images: int | None,
    timing_images: int,
    timing_rounds: int = 1,
    params_file: str = "params.yaml",
    workers: int = 1,
    noise: tuple[float, ...] = (),
    noise_seed: int = 0,
) -> dict[str, Any]:
    """The shipped model and every variant of `variants` (built from the model stage's folder
    `source`, in `workers` processes), scored against the class's float model on its decision
    sets and on the evaluation sets."""
    recipe = read_recipe(build)
    build_record = read_record(build / BUILD_FILE, BuildRecord)
    scorer = Scorer(
        float_stage(build_record, build, source / "model.onnx"), recipe,
        decision_sets(context), evaluation_sets(sets, recipe, eval_images), scoring,
        timing_images,
    )  # fmt: skip
    shipped_kept = float_nodes(shared_reports(build_record, len(build_record.stages)))
    print(f"levers@{target}: shipped", flush=True)
    shipped = onnx.load(build / "model.onnx")
    rows = [scorer.row("shipped", {}, shipped, shipped_kept)]
    print(f"levers@{target}: the shipped model's static int8 group in parts, where it has one",
          flush=True)  # fmt: skip
    split = scorer.split(shipped)
    print(f"levers@{target}: the float model with its weights slightly changed", flush=True)
    fragility = scorer.fragility(noise, noise_seed)
    jobs = []
    for i, (name, patch) in enumerate(variants.items(), start=1):
        variant = patched(recipe, patch, f"{params_file}: levers.variants.{target}.{name}")
        k = shared_prefix(recipe, variant)  # the build's stage k holds their output
        start = build / build_record.stages[k - 1].file if k else source / "model.onnx"
        tail = variant.model_copy(update={"passes": variant.passes[k:]})
        shared = shared_reports(build_record, k)
        jobs.append(
            _Job(f"levers@{target}", f"{i}/{len(variants)}", name, patch, start, tail, shared)
        )
    for row, data in _build_all(jobs, scorer, context, workers):
        rows.append(row)
        if data is not None:
            scorer.models[row.name] = data
    print(f"levers@{target}: timing {len(scorer.models) + 1} models, {timing_rounds} rounds",
          flush=True)  # fmt: skip
    return {**scorer.timed(rows, timing_rounds), "split": split, "fragility": fragility}


@dataclasses.dataclass(frozen=True)
class _Job:
    """One variant to build and score: its passes from `start` on."""

    stage: str  # levers@<class>, for the progress lines
    of: str  # "i/n"
    name: str
    patch: dict[str, Any]
    start: Path
    tail: Recipe
    shared: dict[str, Any]  # the build's reports of the passes the variant shares with it


_WORKER: tuple[Scorer, PassContext] | None = None  # a worker's scorer and decision data


def _init_worker(scorer: Scorer, context: PassContext) -> None:
    global _WORKER
    _WORKER = (scorer, context)


def _drop_worker() -> None:
    global _WORKER
    _WORKER = None


def _build_and_score(job: _Job) -> tuple[LeverRow, bytes | None]:
    """The variant's row and, when it was built, its model's bytes (timed by the parent)."""
    assert _WORKER is not None, "_init_worker first"
    scorer, context = _WORKER
    print(f"{job.stage}: variant {job.of} {job.name} from {job.start.name} ...", flush=True)
    try:
        results = run_passes(onnx.load(job.start), job.tail, context)
    except PassError as e:
        print(f"{job.stage}: {job.name} refused: {e}", flush=True)
        return LeverRow(name=job.name, patch=job.patch, error=str(e)), None
    # a quantizer among the shared passes reports in the build record, not in `results`
    reports = {**job.shared, **{k: v for r in results for k, v in r.report.items()}}
    row = scorer.row(job.name, job.patch, results[-1].model, float_nodes(reports))
    row = row.model_copy(update={"qat": fine_tune(reports)})
    return row, scorer.models.pop(job.name)


def fine_tune(report: dict[str, Any]) -> QatRecord | None:
    """What a quantization pass's report says its fine-tune (qat_images) did, if it ran."""
    found = [r["qat"] for r in report.values() if isinstance(r, dict) and r.get("qat")]
    return QatRecord.model_validate(found[0]) if found else None


def _build_all(
    jobs: list[_Job], scorer: Scorer, context: PassContext, workers: int
) -> list[tuple[LeverRow, bytes | None]]:
    """Every job's result in job order: in this process with one worker, else in `workers`
    fresh processes (spawned: no onnxruntime state is inherited)."""
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        _init_worker(scorer, context)
        try:
            return [_build_and_score(job) for job in jobs]
        finally:
            _drop_worker()  # hold no model or decision data past the stage
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, spawn, _init_worker, (scorer, context)) as pool:
        return list(pool.map(_build_and_score, jobs))


def measure_levers(
    params: Params, target: str, model_dir: Path, data: Path, build: Path,
    params_file: str = "params.yaml",
) -> LeverRecord:  # fmt: skip
    """params.levers.variants.<target>, built and scored; no rows when it lists none."""
    lev = params.levers
    record = {
        "target": target,
        "machine": machine_info(),
        "eval_images": lev.eval_images,
        "timing_images": lev.timing_images,
        "timing_rounds": lev.timing_rounds,
    }
    variants = lev.variants.get(target)
    if not variants:
        return LeverRecord(**record)
    contract = read_contract(model_dir)
    sets = EvalSets(read_sets(data, params.data.sources(), "eval"))
    allowed = params.site_chars(model_dir)
    context, _ = decision_context(
        modelio.load(model_dir / "model.onnx"), data, params.data.decision_sources(),
        read_recipe(build), allowed, contract.scoring, params.data.min_accuracy, params_file,
    )  # fmt: skip
    measured = measure_class(
        target, model_dir, build, context, sets, variants, contract.scoring,
        lev.eval_images, lev.timing_images, lev.timing_rounds, params_file, usable_cores(),
        tuple(lev.weight_noise), lev.noise_seed,
    )  # fmt: skip
    return LeverRecord(**record, **measured)
