"""The bench stage: every variant of a device class timed in fresh, pinned worker processes.

Each figure is the median over interleaved rounds and the min/max spread is kept. This module
picks the timed images and assembles metrics/<C>.json's record; spawn.py runs the worker
processes, variants.py lists what is timed and accuracy.py gathers each variant's accuracy.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..baselines import ACCURACY_FILE
from ..build import decided_on
from ..contract import Contract
from ..data.dataset import read_sets
from ..evaluate import EvalSets
from ..params import BenchParams
from ..recipe import Recipe
from ..records import (
    BaselinesRecord,
    BenchRecord,
    ClientsRecord,
    EvalRecord,
    MemorySetting,
    SetAccuracy,
    VariantMetrics,
    VerifyRecord,
    read_record,
)
from ..scoring import Scoring, score
from . import budget
from . import floor as floors
from .accuracy import accuracy_sources, accuracy_table, bundle_accuracy
from .machine import machine_info, pinned_cores
from .metrics import attributable, check_budgets, ratio_spread, ratios, round_stats, summarize
from .spawn import core_slots, long_session_variants, long_sessions, measure, same_worker
from .variants import (
    BenchInputs,
    Variant,
    baseline_variants,
    floor_variants,
    memory_variants,
    pipeline_variants,
)

# ---------------------------------------------------------------------------- records


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
    timed_with: str | None = None,
) -> VariantMetrics:
    """Size, accuracy, median timings and memory growth of one variant (or why skipped);
    the timed texts are compared with their labels as every accuracy is (the contract's
    scoring). `timed_with`: the variant whose runs these are (same worker, timed once)."""
    rec = VariantMetrics(
        kind=v.kind, size_mb=v.size_mb, floor=v.floor, timed_with=timed_with, **v.record
    )
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
            "rss_growth_late_mb": round(long["rss_end_mb"] - long["rss_half_mb"], 1),
            "long_session": len(long["total_ms"]),
        }
    return rec.model_copy(update=update)


def with_attributable(records: dict[str, VariantMetrics]) -> dict[str, VariantMetrics]:
    return {
        name: v.model_copy(update=attributable(v, records.get(v.floor or "")))
        for name, v in records.items()
    }


def memory_table(records: dict[str, VariantMetrics]) -> list[MemorySetting]:
    """Each flipped memory setting against the recipe's, same file, same run."""
    base = records.get("mem:recipe")
    if base is None or base.skipped:
        return []
    rows = []
    for name, v in records.items():
        if not name.startswith("mem:") or v.skipped:
            continue
        rows.append(
            MemorySetting(
                variant=name,
                setting="recipe" if name == "mem:recipe" else name[4:],
                cold_start_ms=v.cold_start_ms,
                peak_rss_mb=v.peak_rss_mb,
                rss_growth_mb=v.rss_growth_mb,
                rss_growth_late_mb=v.rss_growth_late_mb,
                warm_p50_ms=v.warm_p50_ms,
                peak_rss_delta_mb=_delta(v.peak_rss_mb, base.peak_rss_mb),
                cold_start_delta_ms=_delta(v.cold_start_ms, base.cold_start_ms),
                warm_p50_delta_ms=_delta(v.warm_p50_ms, base.warm_p50_ms),
            )
        )
    return rows


def _delta(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


# ---------------------------------------------------------------------------- facts


def dataset_info(
    sets: EvalSets, timed: list[Path], params: BenchParams, plan: budget.Plan
) -> dict[str, Any]:
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
        "long_session_scope": params.long_session_scope,
        **plan.record(),  # repeats and long_session as run, and the budget's reason if cut
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
) -> BenchRecord:
    """Measure every variant of a build and assemble metrics/<C>.json's record (the compute
    floor's MatMul sizes are params.floor_sizes)."""
    started = time.monotonic()  # the time budget counts the bundle's accuracy run too
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
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        variants = [
            *baseline_variants(inputs, recipe, contract, list(params.baselines), Path(tmp)),
            *pipeline_variants(inputs, recipe, contract),
            *memory_variants(inputs, recipe),
        ]
        # the shipped primary file is the final model: its texts are final's
        acc |= {v.name: acc["final"] for v in variants if v.name.startswith("mem:")}
        kinds = {v.kind for v in variants}
        variants += floor_variants(inputs, recipe, contract, kinds, Path(tmp))
        alias = same_worker([v for v in variants if v.skipped is None])
        threads = recipe.runtime.intra_op_threads
        plan = budget.fit(params.repeats, params.long_session, None, 0.0, 0.0, [], 1)

        def rounds(first: dict[str, list[dict[str, Any]]], round_s: float) -> int:
            nonlocal plan
            long_runs = [
                budget.seconds_per_call(first[alias.get(v.name, v.name)][0])
                for v in long_session_variants(variants, params)
                if first.get(alias.get(v.name, v.name))
            ]
            plan = budget.fit(
                params.repeats,
                params.long_session,
                params.budget_minutes,
                time.monotonic() - started,
                round_s,
                long_runs,
                len(core_slots(threads)),
            )
            if plan.cut:
                print(plan.message(label), file=sys.stderr, flush=True)
            return plan.repeats

        runs = measure(variants, images, params, cores, label, alias, rounds)
        long = long_sessions(variants, images, params, threads, label, plan.long_session)
    sources = accuracy_sources(evaluation)
    records = with_attributable(
        {
            v.name: variant_record(
                v,
                runs.get(v.name, []),
                long.get(v.name),
                acc.get(v.name),
                labels,
                contract.scoring,
                alias.get(v.name),
            ).model_copy(update={"accuracy_source": sources.get(v.name)})
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
        floors.matmul_rates(params.floor_sizes),
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
        dataset=dataset_info(sets, images, params, plan),
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
        profiles_machine=verified.build_machine,
        clients=read_record(inputs.clients, ClientsRecord).clients,
    )
