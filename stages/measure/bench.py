"""The bench stage: every variant of a device class timed in fresh, pinned worker processes.

Rounds are interleaved (round r runs variant A, B, C, ... once each, then round r+1), so a slow
spell of this noisy machine hits every variant alike; each figure is the median over rounds and
the min/max spread is kept. Each round is one fresh `python -m stages.measure.worker` process
per variant, so cold start and peak RSS are a real process's, not a warmed-up parent's.

Variants: the baselines (stock, stock_default, naive_int8), reference, every stage, final, the
bundle (fallback loaded only when an image needs it) and the bundle with its fallback loaded,
the shipped model under each session memory setting flipped, and one runtime floor per
process kind (our runner, ddddocr, the bundle runtime) for the attributable figures. Deployable
variants also get one long-session run (`bench.long_session` calls) for their memory growth.

Accuracy comes from evaluate's eval.json and baselines' accuracy.json, except the bundle's,
which is measured here on every evaluation image through the runtime's whole fallback chain.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocr_bundles_runtime.manifest import sizes_mb

from .. import modelio
from ..baselines import ACCURACY_FILE, NAIVE_FILE, stock_kind, stock_model_file
from ..build import decided_on
from ..contract import Contract
from ..data.dataset import read_sets
from ..errors import PipelineError
from ..evaluate import EvalSets, score_sets
from ..params import BenchParams
from ..progress import Progress, map_ordered, usable_cores
from ..recipe import Recipe
from ..records import (
    BUILD_FILE,
    BaselinesRecord,
    BenchRecord,
    BuildRecord,
    EvalRecord,
    SetAccuracy,
    VariantEval,
    VariantMetrics,
    VerifyRecord,
    read_record,
)
from ..scoring import Scoring, score
from . import floor as floors
from .machine import ROOT, machine_info, pinned_cores
from .metrics import attributable, check_budgets, ratio_spread, ratios, round_stats, summarize

STDERR_TAIL = 2000  # characters of a failed worker's stderr quoted in the error
FLOORS = {"onnx": "runtime_floor", "stock": "runtime_floor_stock", "bundle": "runtime_floor_bundle"}
TIMEOUT_S = 900.0  # per worker process


class BenchError(PipelineError):
    """A worker failed or timed out; the message names the variant and quotes its stderr."""


@dataclass(frozen=True)
class BenchInputs:
    """Every path the stage reads, from its command line."""

    target: str
    source: Path  # models/source
    build: Path  # build/<C>/model
    eval_json: Path
    bundle: Path
    baselines: Path
    data: Path
    sets: list[str]
    verify: Path  # verify/<C>.json: what each CPU profile of the class reads


@dataclass(frozen=True)
class Variant:
    """One thing to time: `worker` holds its kind-specific worker spec fields."""

    name: str
    kind: str  # onnx | stock | bundle
    size_mb: float | None
    worker: dict[str, Any] = field(default_factory=dict)
    long_session: bool = False  # deployable: gets a long-session memory run
    floor: str | None = None  # the runtime floor of its process kind
    skipped: str | None = None  # why it is not measured
    record: dict[str, Any] = field(default_factory=dict)  # extra fields for its VariantMetrics


# ---------------------------------------------------------------------------- workers


def run_order(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: every variant once per round, rounds one after another."""
    return [(r, name) for r in range(repeats) for name in names]


def worker_spec(
    variant: Variant, images: list[Path], params: BenchParams, cores: list[int], long: int
) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "kind": variant.kind,
        "cores": cores,
        "images": [str(p.resolve()) for p in images],
        "warm_images": params.warm_images,
        "warmup": params.warmup,
        "long_session": long,
        **variant.worker,
    }


def spawn(spec: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Run one worker; its result plus `cold_start_ms`, from spawn to its first text."""
    with tempfile.TemporaryFile(mode="w+b") as errf:
        t0 = time.perf_counter()
        with subprocess.Popen(
            [sys.executable, "-m", "stages.measure.worker", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errf,
            stdin=subprocess.DEVNULL,
        ) as proc:
            try:
                lines, first_at = _read_events(proc, t0 + timeout_s)
                rc = proc.wait(timeout=max(1.0, t0 + timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(
                    _failure(spec, f"timed out after {timeout_s:.0f}s", errf)
                ) from None
        if rc != 0 or first_at is None or len(lines) < 2:
            raise BenchError(_failure(spec, f"exit code {rc}", errf))
    result = json.loads(lines[-1])
    result["cold_start_ms"] = (first_at - t0) * 1e3
    result["first_text"] = json.loads(lines[0])["text"]
    return result


def _read_events(proc: subprocess.Popen[bytes], deadline: float) -> tuple[list[str], float | None]:
    """Read stdout to EOF with select, timestamping the arrival of the first full line."""
    assert proc.stdout is not None
    fd, buf, first_at = proc.stdout.fileno(), b"", None
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if first_at is None and b"\n" in chunk:
            first_at = time.perf_counter()
        if not chunk:
            return [ln for ln in buf.decode().splitlines() if ln.strip()], first_at
        buf += chunk


def _failure(spec: dict[str, Any], what: str, errf: Any) -> str:
    errf.seek(0)
    tail = errf.read().decode(errors="replace")[-STDERR_TAIL:]
    return f"bench worker for variant '{spec['variant']}' failed ({what}); stderr tail:\n{tail}"


def measure(
    variants: list[Variant], images: list[Path], params: BenchParams, cores: list[int], label: str
) -> dict[str, list[dict[str, Any]]]:
    """All timing rounds, interleaved; each variant's worker results in round order."""
    live = [v for v in variants if v.skipped is None]
    by_name = {v.name: v for v in live}
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in live}
    order = run_order([v.name for v in live], params.repeats)
    bar = Progress(f"{label}: timing rounds ({len(live)} variants x {params.repeats})", len(order))
    for _, name in order:
        runs[name].append(spawn(worker_spec(by_name[name], images, params, cores, 0)))
        bar.step()
    bar.close()
    return runs


def core_slots(threads: int, available: Sequence[int] | None = None) -> list[list[int]]:
    """Disjoint sets of `threads` CPUs: long-session runs measure memory, not time, so they
    may run side by side, one per slot."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    n = max(1, threads)
    slots = [cpus[i : i + n] for i in range(0, len(cpus) - n + 1, n)]
    return slots or [cpus]


def long_sessions(
    variants: list[Variant], images: list[Path], params: BenchParams, threads: int, label: str
) -> dict[str, dict[str, Any]]:
    """One long-session run per variant in scope (deployable ones, or every one): resident
    memory after warm-up and after `params.long_session` recognitions in the same process."""
    every = params.long_session_scope == "all"
    todo = [v for v in variants if (every or v.long_session) and v.skipped is None]
    if not params.long_session or not todo:
        return {}
    slots = core_slots(threads)
    bar = Progress(
        f"{label}: long sessions ({params.long_session} calls each, {len(slots)} at a time)",
        len(todo),
    )

    def one(i: int, v: Variant) -> tuple[str, dict[str, Any]]:
        spec = worker_spec(v, images, params, slots[i % len(slots)], params.long_session)
        out = spawn(spec)
        bar.step()
        return v.name, out

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        done = dict(pool.map(one, range(len(todo)), todo))
    bar.close()
    return done


# ---------------------------------------------------------------------------- variants


def _onnx(name: str, path: Path, pre: Any, rt: Any, **kw: Any) -> Variant:
    spec = {"model": str(path.resolve()), "preprocess": pre.as_dict(), "runtime": rt.as_dict()}
    return Variant(name, "onnx", round(modelio.size_mb(path), 3), spec, floor=FLOORS["onnx"], **kw)


def baseline_variants(
    inputs: BenchInputs, recipe: Recipe, contract: Contract, include: list[str]
) -> list[Variant]:
    origin = json.loads((inputs.source / "source.json").read_text())
    out = []
    threads = dataclasses.replace(recipe.runtime, providers=("CPUExecutionProvider",))
    for name in include:
        if name == "naive_int8":
            out.append(_onnx(name, inputs.baselines / NAIVE_FILE, contract.input, threads))
            continue
        kind = stock_kind(name, origin)
        if kind is None:  # a file source's stock: its model as declared, plain onnxruntime
            plain = type(recipe.runtime)(intra_op_threads=recipe.runtime.intra_op_threads)
            out.append(
                _onnx(name, inputs.source / "model.onnx", contract.input, plain, long_session=True)
            )
            continue

        size = round(modelio.size_mb(stock_model_file(kind)), 3)
        # one stock long session is the comparison; the int8 default is not what we replace
        long = name == "stock"
        out.append(Variant(name, "stock", size, {"stock": kind}, long, FLOORS["stock"]))
    return out


def pipeline_variants(inputs: BenchInputs, recipe: Recipe, contract: Contract) -> list[Variant]:
    """reference, every stage model and final (our runner), then the bundle two ways."""
    rt, pre = recipe.runtime, recipe.preprocess
    out = [_onnx("reference", inputs.source / "model.onnx", contract.input, rt)]
    for st in read_record(inputs.build / BUILD_FILE, BuildRecord).stages:
        out.append(_onnx(st.stem, inputs.build / st.file, pre, rt))
    # memory growth is measured on what ships (the bundle), not on final: same model, and a
    # long session costs 5000 recognitions of build time
    out.append(_onnx("final", inputs.build / "model.onnx", pre, rt))
    manifest = json.loads((inputs.bundle / "manifest.json").read_text())
    sizes = sizes_mb(inputs.bundle, manifest)
    spec = {"bundle": str(inputs.bundle.resolve())}
    bundle = Variant("bundle", "bundle", sizes["ships_mb"], spec, True, FLOORS["bundle"])
    out.append(dataclasses.replace(bundle, record=sizes))
    if "fallback" in manifest["models"]:
        total = round(sizes["ships_mb"] + sizes["optional_mb"], 3)
        with_fb = {**spec, "load_fallback": True}
        out.append(
            dataclasses.replace(bundle, name="bundle+fallback", size_mb=total, worker=with_fb)
        )
    return out


def memory_variants(inputs: BenchInputs, recipe: Recipe) -> list[Variant]:
    """The shipped primary file under the recipe's session memory settings, then with each
    setting flipped: what each one saves or costs, measured, not assumed."""
    manifest = json.loads((inputs.bundle / "manifest.json").read_text())
    fmt = manifest["formats"][0]
    path = inputs.bundle / manifest["models"]["primary"]["files"][fmt]
    rt, pre = recipe.runtime, recipe.preprocess
    flips = ["enable_cpu_mem_arena", "enable_mem_pattern"]
    if fmt == "ort":
        flips.append("ort_bytes_for_initializers")
    out = [_onnx("mem:recipe", path, pre, rt)]  # its growth: the bundle's long session
    for name in flips:
        flipped = dataclasses.replace(rt, **{name: not getattr(rt, name)})
        label = f"mem:{name}={'on' if getattr(flipped, name) else 'off'}"
        # the arena decides whether resident memory grows over a session: measure it there
        out.append(_onnx(label, path, pre, flipped, long_session=name == "enable_cpu_mem_arena"))
    return out


def floor_variants(
    inputs: BenchInputs, recipe: Recipe, contract: Contract, kinds: set[str], tmp: Path
) -> list[Variant]:
    """One runtime floor per process kind in use: the same process around a do-nothing model."""
    final = modelio.spec(modelio.load(inputs.build / "model.onnx"))
    out = []
    if "onnx" in kinds:
        path = tmp / "runtime_floor.onnx"
        modelio.save(floors.floor_model(final, recipe.preprocess), path)
        out.append(
            _onnx(FLOORS["onnx"], path, recipe.preprocess, recipe.runtime, long_session=True)
        )
    if "stock" in kinds:
        out.append(stock_floor(contract, tmp))
    if "bundle" in kinds:
        folder = tmp / "floor_bundle"
        manifest = json.loads((inputs.bundle / "manifest.json").read_text())
        floors.write_floor_bundle(folder, floors.floor_model(final, recipe.preprocess), manifest)
        spec = {"bundle": str(folder)}
        out.append(Variant(FLOORS["bundle"], "bundle", None, spec, True, FLOORS["bundle"]))
    return out


def stock_floor(contract: Contract, tmp: Path) -> Variant:
    """ddddocr's own process (its imports, its preprocessing) loading a do-nothing model
    through its custom-model API."""
    import ddddocr.charsets as cs

    charset = list(cs.CHARSET_BETA)
    spec = modelio.CtcSpec("x", "logits", charset, "TBC", 0)
    path = tmp / "runtime_floor_stock.onnx"
    modelio.save(floors.floor_model(spec, contract.input), path)
    charsets = tmp / "runtime_floor_stock.json"
    charsets.write_text(
        json.dumps({"charset": charset, "word": False, "image": [-1, 64], "channel": 1})
    )
    worker = {"model": str(path), "charsets": str(charsets)}
    return Variant(FLOORS["stock"], "stock", None, worker, True, FLOORS["stock"])


# ---------------------------------------------------------------------------- records


def accuracy_table(
    evaluation: EvalRecord, baselines: BaselinesRecord | None
) -> dict[str, dict[str, SetAccuracy]]:
    """name -> set -> accuracy, CER, agreement, from the records that measured them."""
    pool: dict[str, VariantEval] = dict(evaluation.variants)
    if baselines is not None:
        pool.update(baselines.variants)
    return {
        name: {
            s: SetAccuracy(accuracy=r.accuracy, cer=r.cer, agreement=r.agreement)
            for s, r in v.sets.items()
        }
        for name, v in pool.items()
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


def _cycled(labels: list[str], n: int) -> list[str]:
    """The labels of n timed recognitions: the workers cycle through the images."""
    return [labels[i % len(labels)] for i in range(n)]


def variant_record(
    v: Variant,
    runs: list[dict[str, Any]],
    long: dict[str, Any] | None,
    acc: dict[str, SetAccuracy] | None,
    labels: list[str],
    scoring: Scoring,
) -> VariantMetrics:
    """Size, accuracy, median timings and memory growth of one variant (or why skipped);
    the timed texts are compared with their labels as every accuracy is (the contract's
    scoring)."""
    rec = VariantMetrics(kind=v.kind, size_mb=v.size_mb, floor=v.floor, **v.record)
    if v.skipped:
        return rec.model_copy(update={"skipped": v.skipped})
    stats = summarize([round_stats(r) for r in runs])
    spread = stats.pop("spread")
    texts = runs[0]["texts"]
    update: dict[str, Any] = {
        **stats,
        "sets": acc or {},
        "timed_accuracy": round(score(texts, _cycled(labels, len(texts)), scoring)["accuracy"], 4),
        "ort_threads": runs[0]["ort_threads"],
        "os_threads": runs[0]["os_threads"],
        "escaped_threads": max(r["escaped_threads"] for r in runs),
        "imported": runs[0]["imported"],
        "model_timing": runs[0].get("model_timing"),
        "fallback_loaded": any(r.get("fallback_loaded") for r in runs)
        if v.kind == "bundle"
        else None,
        "spread": spread,
    }
    if long is not None:
        update |= {
            "rss_warm_mb": round(long["rss_warm_mb"], 1),
            "rss_growth_mb": round(long["rss_end_mb"] - long["rss_warm_mb"], 1),
            "long_session": len(long["total_ms"]),
        }
    return rec.model_copy(update=update)


def with_attributable(records: dict[str, VariantMetrics]) -> dict[str, VariantMetrics]:
    return {
        name: v.model_copy(update=attributable(v, records.get(v.floor or "")))
        for name, v in records.items()
    }


def memory_table(records: dict[str, VariantMetrics]) -> list[dict[str, Any]]:
    """Each flipped memory setting against the recipe's, same file, same run."""
    base = records.get("mem:recipe")
    if base is None or base.skipped:
        return []
    rows = []
    for name, v in records.items():
        if not name.startswith("mem:") or v.skipped:
            continue
        rows.append(
            {
                "variant": name,
                "setting": "recipe" if name == "mem:recipe" else name[4:],
                "cold_start_ms": v.cold_start_ms,
                "peak_rss_mb": v.peak_rss_mb,
                "rss_growth_mb": v.rss_growth_mb,
                "warm_p50_ms": v.warm_p50_ms,
                "peak_rss_delta_mb": _delta(v.peak_rss_mb, base.peak_rss_mb),
                "cold_start_delta_ms": _delta(v.cold_start_ms, base.cold_start_ms),
                "warm_p50_delta_ms": _delta(v.warm_p50_ms, base.warm_p50_ms),
            }
        )
    return rows


def _delta(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


# ---------------------------------------------------------------------------- facts


def dataset_info(sets: EvalSets, timed: list[Path], params: BenchParams) -> dict[str, Any]:
    from PIL import Image

    sizes = []
    for p in timed:
        with Image.open(p) as im:
            sizes.append(im.size)
    sizes.sort()
    return {
        "eval_images": sets.sizes,
        "timed_image_size_median": list(sizes[len(sizes) // 2]),
        "timed_images": params.warm_images,
        "timed_from": "every evaluation set, interleaved",
        "warmup": params.warmup,
        "repeats": params.repeats,
        "long_session": params.long_session,
        "long_session_scope": params.long_session_scope,
    }


# ---------------------------------------------------------------------------- the stage


def timed_images(sets: EvalSets, n: int) -> tuple[list[Path], list[str]]:
    """The first images of every set, interleaved, `n` in all."""
    paths, labels = [], []
    lists = [list(zip(sets.images[s], sets.labels[s], strict=True)) for s in sets.images]
    for i in range(max(len(x) for x in lists)):
        for x in lists:
            if i < len(x) and len(paths) < n:
                paths.append(x[i][0])
                labels.append(x[i][1])
    return paths, labels


def run_bench(
    inputs: BenchInputs,
    recipe: Recipe,
    contract: Contract,
    params: BenchParams,
    floor_sizes: Sequence[int] = (256, 512, 1024),
) -> BenchRecord:
    """Measure every variant of a build and assemble metrics/<C>.json's record."""
    evaluation = read_record(inputs.eval_json, EvalRecord)
    base = (
        read_record(inputs.baselines / ACCURACY_FILE, BaselinesRecord) if params.baselines else None
    )
    sets = EvalSets(read_sets(inputs.data, inputs.sets, "eval"))
    images, labels = timed_images(sets, params.warm_images)
    acc = accuracy_table(evaluation, base)
    label = f"bench@{inputs.target}"
    acc |= bundle_accuracy(
        inputs.bundle, sets, contract.scoring, label, recipe.runtime.intra_op_threads
    )
    cores = pinned_cores(recipe.runtime.intra_op_threads)
    variants = [
        *baseline_variants(inputs, recipe, contract, list(params.baselines)),
        *pipeline_variants(inputs, recipe, contract),
        *memory_variants(inputs, recipe),
    ]
    # the shipped primary file is the final model: its texts are final's
    acc |= {v.name: acc["final"] for v in variants if v.name.startswith("mem:")}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        kinds = {v.kind for v in variants}
        variants += floor_variants(inputs, recipe, contract, kinds, Path(tmp))
        runs = measure(variants, images, params, cores, label)
        long = long_sessions(variants, images, params, recipe.runtime.intra_op_threads, label)
    records = with_attributable(
        {
            v.name: variant_record(
                v,
                runs.get(v.name, []),
                long.get(v.name),
                acc.get(v.name),
                labels,
                contract.scoring,
            )
            for v in variants
        }
    )
    stock = records.get("stock")
    compute = floors.compute_floor(
        {
            "reference": (inputs.source / "model.onnx", contract.input),
            "final": (inputs.build / "model.onnx", recipe.preprocess),
        },
        images,
        {n: {"model_p50_ms": v.model_p50_ms} for n, v in records.items()},
        floors.matmul_rates(floor_sizes),
        recipe.runtime.intra_op_threads,
    )
    final, bundle = records["final"], records["bundle"]
    verified = read_record(inputs.verify, VerifyRecord)
    vs = (lambda v: ratios(v, stock)) if stock is not None else (lambda v: None)
    affinities = sorted({tuple(r["thread_affinity"]) for rs in runs.values() for r in rs})
    return BenchRecord(
        target=inputs.target,
        description=recipe.description,
        threads=recipe.runtime.intra_op_threads,
        affinity=cores,
        worker_affinity=[list(a) for a in affinities],
        machine=machine_info(),
        dataset=dataset_info(sets, images, params),
        stock=base.stock if base is not None else "not measured",
        variants=records,
        ratios=vs(final),
        ratios_spread=ratio_spread(runs.get("final", []), runs.get("stock", [])),
        bundle_ratios=vs(bundle),
        bundle_ratios_spread=ratio_spread(runs.get("bundle", []), runs.get("stock", [])),
        vs_stock_default=(
            ratios(bundle, records["stock_default"]) if "stock_default" in records else None
        ),
        budgets=check_budgets(
            recipe.budgets, bundle, records["reference"], vs(bundle), decided_on(inputs.build)
        ),
        memory_settings=memory_table(records),
        compute_floor=compute,
        profiles=verified.profiles,
        clients=verified.clients,
    )
