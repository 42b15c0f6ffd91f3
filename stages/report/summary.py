"""The cross-class summary, reports/summary.md and README's section: results, ratios against
stock, CPU profiles, accuracy, baselines, preprocessing, the server, the data the decisions used.

It has no top-level heading so it can sit inside README between the summary markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from ..measure.serve_bench import serve_table
from ..params import Baseline
from ..records import (
    BenchRecord,
    BuildRecord,
    Change,
    PreprocessRecord,
    Ratios,
    ServeRecord,
    SourceUse,
    VariantMetrics,
)
from .class_page import budget_cut, client_rows, ran_elsewhere, vectors_cell
from .format import (
    DASH,
    GROWTH_HEADER,
    acc_cells,
    change_cell,
    change_pts,
    edge_words,
    fmt,
    growth_cell,
    isa_words,
    on_the_edge,
    pct,
    set_names,
    signed,
    table,
    times,
)

# the baselines' names, in their order in recipe.Baseline: the one list of them
BASELINES: tuple[str, ...] = get_args(Baseline)


def summary(
    metrics: dict[str, BenchRecord],
    preprocess: PreprocessRecord | None,
    choices: dict[str, dict[str, Any]],
    pictures: dict[str, str],
    serve: ServeRecord | None = None,
    notes: Sequence[str] = (),
    builds: dict[str, BuildRecord] | None = None,
) -> str:
    """Across classes: the bundle of each against stock measured the same way; `notes`: what
    params.yaml set aside (Params.notes), so a missing baseline or class is explained;
    `builds`: which data sources each class's decisions used and what their labels cover."""
    first = next(iter(metrics.values()))
    parts = [
        "### Results per device class (the bundle an app ships)",
        results_table(metrics),
        f"### Against stock, same run on {isa_words(first.machine)} (median ratio, [min–max] over "
        "interleaved rounds)",
        ratios_table(metrics),
        "### What each CPU profile reads (verify stage: the shipped model, fixed subset)",
        profiles_table(metrics),
        "### Accuracy per evaluation set",
        accuracy_table(metrics),
        "### Fidelity: what each class's final model reads against the float model it quantizes",
        fidelity_table(metrics),
        "### Baselines",
        baselines_table(metrics),
    ]
    if preprocess:
        parts += ["### Preprocessing candidates (reference model, per set)"]
        parts += [preprocess_table(preprocess, choices)]
    if serve:
        target = serve.bundle.target
        parts += [
            f"### Recognition server ({target} bundle) against stock ddddocr served the same way",
            serve_table(serve).strip(),
        ]
    if builds:
        evaluated = list(dict.fromkeys(s for m in metrics.values() for s in set_names(m)))
        parts += [
            "### Data the decisions used (build.json: sources)",
            data_table(builds, evaluated),
        ]
    if notes:
        parts += ["### Notes (params.yaml)", "\n".join(f"- {n}" for n in notes)]
    parts += [f"![{name}]({path})" for name, path in pictures.items()]
    parts.append(_machine_line(metrics))
    return "\n\n".join(parts) + "\n"


def profiles_table(metrics: dict[str, BenchRecord]) -> str:
    rows = []
    for target, m in metrics.items():
        elsewhere = ran_elsewhere(m)
        for name, run in m.profiles.items():
            if run.how == "unavailable":
                rows.append([target, name, "not run here", DASH, DASH, DASH])
                continue
            cells = [
                f"{s} {pct(r.accuracy)} ({signed(-r.accuracy_drop_pts)} pts), ref "
                f"{fmt(r.agreement_reference, 3)}, build {fmt(r.agreement_build, 3)}"
                for s, r in run.sets.items()
            ]
            images = next(iter(run.sets.values())).images if run.sets else 0
            ok = fmt(run.within_budget)
            if run.conformance is not None:
                ok += f"; vectors {vectors_cell(run)}"
            how = f"{run.how} on {elsewhere}" if elsewhere and run.how != "emulated" else run.how
            rows.append([target, name, how, str(images), "; ".join(cells), ok])
        rows += client_rows(target, m)
    header = ["class", "profile", "ran", "images / set", "accuracy vs reference, agreement", "ok"]
    return table(header, rows) if rows else "No class declares a CPU profile."


def data_table(builds: dict[str, BuildRecord], evaluated: Sequence[str] = ()) -> str:
    """Per source: what its labels draw from, how well the source model reads it, and which
    classes decided on it; a synthetic set's accuracy says nothing of characters it never draws.
    An `evaluated` set no build read is evaluation only (params.yaml `eval_only`)."""
    names = list(dict.fromkeys(s for b in builds.values() for s in b.sources))
    rows = []
    for name in names:
        uses = {t: b.sources[name] for t, b in builds.items() if name in b.sources}
        first = next(iter(uses.values()))
        read = sorted({pct(u.accuracy) for u in uses.values()})  # per class preprocessing
        used = [t for t, u in uses.items() if u.used]
        rows.append([
            f"`{name}`", first.kind or "–", _coverage(first), " / ".join(read) + " %",
            ", ".join(used) or "none (below data.min_accuracy)",
        ])  # fmt: skip
    rows += [
        [f"`{name}`", DASH, DASH, "not read by any build",
         "none: evaluation only (`eval_only`), no decision saw it"]
        for name in evaluated
        if name not in names
    ]  # fmt: skip
    header = ["source", "kind", "label characters", "source model reads (val)", "decided on by"]
    return table(header, rows)


def _coverage(use: SourceUse) -> str:
    if use.alphabet is None or use.allowed is None:
        return "the folder's labels"
    shown = use.alphabet if len(use.alphabet) <= 40 else use.alphabet[:40] + "…"
    shown = shown.replace("|", "\\|").replace("`", "'")  # table cell, code span
    return f"{len(use.alphabet)} of {use.allowed} allowed (`{shown}`)"


def results_table(metrics: dict[str, BenchRecord]) -> str:
    header = [
        "class",
        "threads",
        "ships MB (optional)",
        "cold start ms",
        "warm p50 ms (p95)",
        "CPU s / 1000",
        "peak RSS MB (+fallback)",
        GROWTH_HEADER,
        "accuracy % per set (vs reference)",
        "budgets",
    ]
    rows = []
    for target, m in metrics.items():
        b, ref = m.variants["bundle"], m.variants["reference"]
        fb = m.variants.get("bundle+fallback")
        sets = set_names(m)
        rows.append(
            [
                f"[{target}](reports/{target}.md)",
                str(m.threads),
                f"{fmt(b.ships_mb, 2)} ({fmt(b.optional_mb, 1)})",
                fmt(b.cold_start_ms, 0),
                f"{fmt(b.warm_p50_ms, 2)} ({fmt(b.warm_p95_ms, 2)})",
                fmt(b.cpu_s_per_1000, 2),
                f"{fmt(b.peak_rss_mb, 0)} ({fmt(fb.peak_rss_mb if fb else None, 0)})",
                growth_cell(b),
                "; ".join(f"{s} {c}" for s, c in zip(sets, acc_cells(b, sets, ref), strict=True)),
                _budget_cell(m),
            ]
        )
    return table(header, rows)


def ratios_table(metrics: dict[str, BenchRecord]) -> str:
    rows = []
    for target, m in metrics.items():
        r, spread = m.bundle_ratios, m.bundle_ratios_spread
        if r is None:
            continue
        rows.append(
            [
                target,
                times(r.size),
                times(r.warm_speedup, spread.get("warm_speedup")),
                times(r.cold_start, spread.get("cold_start")),
                times(r.peak_rss, spread.get("peak_rss")),
                times(r.cpu, spread.get("cpu")),
                f"{times(r.attributable_cold_start)}, {times(r.attributable_peak_rss)}",
                _floor_cell(m),
                _drops(r),
            ]
        )
    header = [
        "class",
        "size (ships)",
        "warm speedup",
        "cold start",
        "peak RSS",
        "CPU / 1000",
        "above floor: cold start, RSS",
        "runtime floor vs stock (cold, RSS)",
        "accuracy vs stock",
    ]
    return table(header, rows)


def _drops(r: Ratios) -> str:
    return ", ".join(
        f"{s} {DASH if d is None else signed(-d)} pts" for s, d in r.accuracy_drop_pts.items()
    )


def _floor_cell(m: BenchRecord) -> str:
    floor, stock = m.variants.get("runtime_floor_bundle"), m.variants.get("stock")
    if floor is None or stock is None or floor.cold_start_ms is None or not stock.cold_start_ms:
        return DASH
    return (
        f"{floor.cold_start_ms / stock.cold_start_ms:.2f}×, "
        f"{floor.peak_rss_mb / stock.peak_rss_mb:.2f}×"
    )


def accuracy_table(metrics: dict[str, BenchRecord]) -> str:
    first = next(iter(metrics.values()))
    sets = set_names(first)
    rows = []
    for name in (*BASELINES, "reference"):
        v = first.variants.get(name)
        if v is not None and not v.skipped:
            rows.append([name, fmt(v.size_mb, 2), *acc_cells(v, sets)])
    for target, m in metrics.items():
        ref = m.variants["reference"]
        for name in ("final", "bundle", "bundle+fallback"):
            v = m.variants.get(name)
            if v is not None and not v.skipped:
                size = v.ships_mb if v.ships_mb is not None else v.size_mb
                rows.append([f"{target} {name}", fmt(size, 2), *acc_cells(v, sets, ref)])
    return table(["model", "size MB", *[f"{s} % (vs reference)" for s in sets]], rows)


def fidelity_table(metrics: dict[str, BenchRecord]) -> str:
    """Per class and set: agreement of final's texts with the float model it quantizes, and
    the answers that changed both ways (- right to wrong, + wrong to right); accuracy can hold
    while many answers flip, and only agreement carries over to images no decision saw."""
    sets = list(dict.fromkeys(s for m in metrics.values() for s in set_names(m)))
    rows = []
    for target, m in metrics.items():
        final = m.variants.get("final")
        if final is None:
            continue
        against = next((r.change.against for r in final.sets.values() if r.change), DASH)
        images = m.dataset.get("eval_images", {})
        cells = [_fidelity_cell(_change(final, s), images.get(s)) for s in sets]
        rows.append([target, against, *cells])
    header = ["class", "float model", *[f"{s}: agreement, -/+; accuracy pts [95 %]" for s in sets]]
    return table(header, rows)


def _fidelity_cell(c: Change | None, images: int | None) -> str:
    """change_cell, then the accuracy change in points with the interval its flips allow: what
    the set resolves (a goal of 0.5 points needs an interval narrower than that)."""
    if c is None or not images:
        return change_cell(c)
    return f"{change_cell(c)}; {change_pts(c.right_to_wrong, c.wrong_to_right, images)}"


def _change(v: VariantMetrics, s: str) -> Change | None:
    r = v.sets.get(s)
    return r.change if r is not None else None


def baselines_table(metrics: dict[str, BenchRecord]) -> str:
    """Stock and naive variants, one row per class they were timed in (pinning differs)."""
    rows = []
    for target, m in metrics.items():
        for name in (*BASELINES, "reference"):
            v = m.variants.get(name)
            if v is None or v.skipped:
                continue
            rows.append(
                [
                    name,
                    target,
                    fmt(v.size_mb, 2),
                    fmt(v.cold_start_ms, 0),
                    f"{fmt(v.warm_p50_ms, 2)} ({fmt(v.warm_p95_ms, 2)})",
                    fmt(v.peak_rss_mb, 0),
                    fmt(v.cpu_s_per_1000, 2),
                    growth_cell(v),
                ]
            )
    header = [
        "variant",
        "timed as class",
        "size MB",
        "cold start ms",
        "warm p50 ms (p95)",
        "peak RSS MB",
        "CPU s / 1000",
        GROWTH_HEADER,
    ]
    return table(header, rows)


def preprocess_table(result: PreprocessRecord, choices: dict[str, dict[str, Any]]) -> str:
    """Every candidate's cost and accuracy on every set, and which class chose it."""
    cands = result.candidates
    sets = list(result.images)
    rows = []
    for name, row in cands.items():
        chosen = [c for c, settings in choices.items() if settings == row.settings]
        rows.append(
            [
                name,
                ", ".join(chosen) or DASH,
                fmt(row.preprocess_ms, 3),
                fmt(row.import_rss_mb, 1),
                *[pct(row.sets[s].accuracy) for s in sets],
            ]
        )
    unmatched = [c for c, s in choices.items() if all(s != r.settings for r in cands.values())]
    note = (
        f"\n\nNot among the candidates: {', '.join(unmatched)} (add their settings to "
        "params.yaml preprocess.candidates to measure them)."
        if unmatched
        else ""
    )
    header = ["candidate", "used by", "ms / image", "imports MB", *[f"{s} %" for s in sets]]
    images = ", ".join(f"{s} {n}" for s, n in result.images.items())
    return table(header, rows) + f"\n\nImages per set: {images}." + note


def _budget_cell(m: BenchRecord) -> str:
    judged = [b.ok for b in m.budgets.values() if b.ok is not None]
    if not judged:
        return "none set"
    failed = [n for n, b in m.budgets.items() if b.ok is False]
    edge = [f"{n} {edge_words(spread)}" for n, spread in on_the_edge(m).items()]
    notes = ([f"missed: {', '.join(failed)}"] if failed else []) + edge
    return f"{sum(judged)}/{len(judged)} ok" + (f" ({'; '.join(notes)})" if notes else "")


def _machine_line(metrics: dict[str, BenchRecord]) -> str:
    first = next(iter(metrics.values()))
    mach, ds = first.machine, first.dataset
    rounds = {name: m.dataset["repeats"] for name, m in metrics.items()}
    if len(set(rounds.values())) > 1:
        counts = ", ".join(f"{n} for {name}" for name, n in rounds.items())
    else:
        counts = str(ds["repeats"])
    cuts = "".join(budget_cut(m.dataset, f"For {name}, it") for name, m in metrics.items())
    return (
        f"Measured on {mach['cpu']} ({', '.join(mach.get('isa', []))}; {mach['cores']} cores), "
        f"onnxruntime {mach['onnxruntime']}; each class's workers pinned to as many cores as its "
        f"intra-op threads; medians of {counts} interleaved rounds of fresh processes, "
        f"{ds['timed_images']} images timed. Speed = stock warm p50 / bundle warm p50. Ratios "
        "differ between machines (int8 gains follow the CPU's VNNI support): rebuild to "
        f"measure yours.{cuts}"
    )
