"""The report stage: metrics/<C>.json and the build records -> reports/<C>.md,
reports/summary.md, reports/index.html (one self-contained page that opens offline), the
pictures plots/pareto.png and plots/sizes.png, and the CSVs behind `dvc plots`.

The summary has no top-level heading so it can sit inside README between the markers
`<!-- summary:start -->` and `<!-- summary:end -->` (see `embed`). Reads records through their
typed models; loads no model.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import plots
from .atomic import write_text
from .errors import PipelineError
from .measure.serve_bench import serve_table
from .records import (
    BUILD_FILE,
    CHECKS_FILE,
    RECIPE_FILE,
    BenchRecord,
    BuildRecord,
    CheckRecord,
    EvalRecord,
    ProfileRun,
    Ratios,
    SourceUse,
    VariantMetrics,
    read_record,
)

START, END = "<!-- summary:start -->", "<!-- summary:end -->"
DASH = "–"
BASELINES = ("stock", "stock_default", "naive_int8")


class ReportError(PipelineError):
    """An input of the report is missing or a README lacks the summary markers."""


# ---------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value * 100:.{digits}f}"


def signed(value: float | None, digits: int = 1) -> str:
    # adding 0.0 turns -0.0 into 0.0, so "no change" never prints as "-0.0"
    return DASH if value is None else f"{round(value, digits) + 0.0:+.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def times(value: float | None, spread: list[float] | None = None) -> str:
    """A ratio with three decimals: the inputs are rounded medians, so two would make a median
    ratio look outside its own per-round spread."""
    if value is None:
        return DASH
    return f"{value:.3f}× [{spread[0]:.3f}–{spread[1]:.3f}]" if spread else f"{value:.3f}×"


def set_names(m: BenchRecord) -> list[str]:
    return list(m.dataset.get("eval_images", {}))


def acc_cells(v: VariantMetrics, sets: list[str], ref: VariantMetrics | None = None) -> list[str]:
    """Accuracy % per set, with the change against `ref` in points when given."""
    out = []
    for s in sets:
        r = v.sets.get(s)
        if r is None:
            out.append(DASH)
            continue
        base = ref.sets.get(s) if ref is not None else None
        delta = f" ({signed((r.accuracy - base.accuracy) * 100)})" if base else ""
        out.append(f"{pct(r.accuracy)}{delta}")
    return out


# ---------------------------------------------------------------------------- per class


def variants_table(m: BenchRecord) -> str:
    sets = set_names(m)
    header = [
        "variant",
        "size MB",
        "cold start ms (import / session / first)",
        "warm p50 ms (p95)",
        "model ms",
        "peak RSS MB",
        "above floor: cold ms, RSS MB",
        "CPU s / 1000",
        "RSS growth MB",
        *[f"{s} %" for s in sets],
    ]
    rows = []
    for name, v in m.variants.items():
        if v.skipped:
            rows.append([f"{name} (skipped: {v.skipped})", fmt(v.size_mb, 2), *[DASH] * 7])
            continue
        parts = f"({fmt(v.import_ms, 0)} / {fmt(v.session_ms, 0)} / {fmt(v.first_ms, 0)})"
        rows.append(
            [
                f"**{name}**" if name in ("final", "bundle") else name,
                fmt(v.ships_mb if v.ships_mb is not None else v.size_mb, 2),
                f"{fmt(v.cold_start_ms, 0)} {parts}",
                f"{fmt(v.warm_p50_ms, 2)} ({fmt(v.warm_p95_ms, 2)})",
                fmt(v.model_p50_ms, 2),
                fmt(v.peak_rss_mb, 0),
                f"{fmt(v.attributable_cold_start_ms, 0)}, {fmt(v.attributable_peak_rss_mb, 1)}",
                fmt(v.cpu_s_per_1000, 2),
                fmt(v.rss_growth_mb, 1),
                *acc_cells(v, sets),
            ]
        )
    return table(header, rows)


def long_scope(ds: dict) -> str:
    """Which variants the long sessions covered (bench.long_session_scope)."""
    if ds.get("long_session_scope") == "all":
        return "for every variant"
    return (
        "for stock, what ships (the bundle, with and without its fallback), the arena flip and "
        "the runtime floors; final and mem:recipe run the bundle's model, so their growth is "
        "the bundle's (`bench.long_session_scope: all` in params.yaml measures every variant)"
    )


def facts(m: BenchRecord) -> str:
    mach, ds = m.machine, m.dataset
    isa = ", ".join(mach.get("isa", [])) or "none of the int8 extensions"
    sizes = ", ".join(f"{s} {n}" for s, n in ds["eval_images"].items())
    return "\n".join(
        [
            f"- Machine: {mach['cpu']} ({isa}), {mach['cores']} cores ({mach['usable_cores']} "
            f"usable), onnxruntime {mach['onnxruntime']}, Python {mach['python']}, ddddocr "
            f"{mach['ddddocr']}.",
            f"- Threads: {m.threads} intra-op; every worker pinned to CPU(s) {m.affinity} "
            f"before importing onnxruntime (reported: {m.worker_affinity}).",
            f"- Evaluation images: {sizes}. Timings: {ds['timed_images']} images from "
            f"{ds['timed_from']}, after {ds['warmup']} warm-up calls, median of {ds['repeats']} "
            f"interleaved rounds, each a fresh process; memory growth over "
            f"{ds['long_session']} calls in one process {long_scope(ds)}.",
            f"- stock is {m.stock}.",
            "- Cold start: spawn to first recognized text (interpreter, imports, session, first "
            "image; page cache warm). Warm: image bytes to text. Model: session.run only. CPU: "
            "user + sys seconds of the whole process per 1000 recognitions (no energy counters "
            "here: CPU time is the energy proxy).",
            "- Above floor: cold start and peak RSS minus the runtime_floor of the same process "
            "kind (our runner, ddddocr, the bundle runtime) around a do-nothing model: what the "
            "model adds on top of Python + the runtime.",
            "- bundle: the shipped files through ocr_bundles_runtime, the fallback loaded only "
            "when an image needs it; bundle+fallback: loaded up front. Their accuracy is measured "
            "through the runtime's fallback chain on every evaluation image.",
        ]
    )


def budgets_section(m: BenchRecord) -> str:
    rows = [
        [
            name + (f" ({b.set})" if b.set else ""),
            fmt(b.limit, 2),
            fmt(b.value, 2),
            DASH if b.ok is None else ("✅" if b.ok else _miss(name)),
        ]
        for name, b in m.budgets.items()
    ]
    return table(["budget (the bundle)", "limit", "value", "ok"], rows)


def _miss(budget: str) -> str:
    return "❌ under" if budget.startswith("min_") else "❌ over"


def memory_section(m: BenchRecord) -> str:
    if not m.memory_settings:
        return "No memory-setting variants were measured."
    rows = [
        [
            r["setting"],
            fmt(r["cold_start_ms"], 0),
            fmt(r["peak_rss_mb"], 1),
            fmt(r["rss_growth_mb"], 1),
            fmt(r["warm_p50_ms"], 2),
            signed(r["peak_rss_delta_mb"]),
            signed(r["cold_start_delta_ms"], 0),
            signed(r["warm_p50_delta_ms"], 2),
        ]
        for r in m.memory_settings
    ]
    header = [
        "session setting (shipped file)",
        "cold start ms",
        "peak RSS MB",
        "RSS growth MB",
        "warm p50 ms",
        "Δ peak RSS MB",
        "Δ cold ms",
        "Δ warm ms",
    ]
    return table(header, rows)


def floor_section(m: BenchRecord) -> str:
    f = m.compute_floor
    if not f:
        return "Not measured."
    threads = f.get("threads", 1)
    lines = []
    for name in ("reference", "final"):
        if name not in f:
            continue
        r = f[name]
        macs = r["mmacs"]
        at = f" ({fmt(r['floor_ms_at_threads'], 2)} ms at {threads} threads)" if threads > 1 else ""
        frac = (
            f"; floor/measured = {fmt(r['floor_fraction'], 2)}" if r.get("floor_fraction") else ""
        )
        lines.append(
            f"- {name}: {fmt(macs['total'], 1)} M MACs ({fmt(macs.get('fp32'), 1)} M fp32, "
            f"{fmt(macs.get('int8'), 1)} M int8) at input width {r['input_width']} → floor "
            f"{fmt(r['floor_ms'], 2)} ms on one core{at}; measured model p50 "
            f"{fmt(r['model_p50_ms'], 2)} ms{frac}."
        )
    rates = f["rate_gmacs"]
    lines.append(
        f"- Rates: {fmt(rates['fp32'], 1)} G MAC/s fp32, {fmt(rates['int8'], 1)} G MAC/s int8 "
        f"({f['rate_op']}). Dot products only: element-wise ops, memory traffic and the LSTM's "
        "step-by-step dependency are not in the floor, so measured/floor shows the headroom."
    )
    return "\n".join(lines)


def stages_section(build: BuildRecord, checks: CheckRecord, evaluation: EvalRecord) -> str:
    sets = list(evaluation.sets)
    rows = []
    for st in build.stages:
        v = evaluation.variants.get(st.stem)
        c = checks.of(st.file)
        rows.append(
            [
                st.stem,
                "exact" if st.exact else "lossy",
                fmt(st.size_mb, 2),
                f"{c.max_abs_diff:.3g}" if c else DASH,
                fmt(c.argmax_agreement, 4) if c else DASH,
                *[
                    f"{pct(v.sets[s].accuracy)} ({pct(v.sets[s].agreement)})" if v else DASH
                    for s in sets
                ],
            ]
        )
    header = [
        "stage",
        "checked",
        "size MB",
        "max abs diff",
        "argmax agreement",
        *[f"{s}: accuracy % (agrees with reference %)" for s in sets],
    ]
    return table(header, rows)


def sensitivity_sections(build: BuildRecord) -> list[str]:
    out = []
    for st in build.stages:
        rep = st.tolerance()
        if rep is None:
            continue
        rows = [
            [s.node, s.op_type, s.group, f"{s.rel_mse:.3g}", fmt(s.quantized)]
            for s in rep.sensitivity
        ]
        sens = table(["node", "op", "group", "rel. MSE", "quantized"], rows)
        sets = list(rep.reference)
        tried = [
            [
                str(t.k),
                fmt(t.dynamic),
                *[
                    f"{fmt(t.sets[s]['accuracy'], 2)} ({fmt(t.sets[s]['agreement'], 3)})"
                    for s in sets
                ],
                "✅" if t.accepted else "❌",
            ]
            for t in rep.steps
        ]
        header = ["float static nodes", "dynamic int8", *[f"{s} acc % (agreement)" for s in sets]]
        steps = table([*header, "accepted"], tried)
        ref = ", ".join(f"{s} {fmt(a, 2)} %" for s, a in rep.reference.items())
        why = "\n".join(f"- `{n}`: {w}" for n, w in rep.why.items()) or "- none: every node int8"
        out.append(
            f"### {st.stem}\n\nValidation accuracy of the input model: {ref}. A variant is "
            f"accepted only when every set is within tolerance.\n\n{steps}\n\nKept float:\n\n"
            f"{why}\n\nSensitivity (output error when only this node is quantized, on "
            f"calibration images of every source):\n\n{sens}"
        )
    return out


def by_length_section(evaluation: EvalRecord) -> str:
    ref, fin = evaluation.variants["reference"], evaluation.variants["final"]
    rows = []
    for s in evaluation.sets:
        r, f = ref.sets[s].by_length, fin.sets[s].by_length
        for k in sorted(set(r) | set(f), key=int):
            n = (r.get(k) or f.get(k)).n
            ra, fa = r.get(k), f.get(k)
            rows.append(
                [s, k, str(n), pct(ra.accuracy if ra else None), pct(fa.accuracy if fa else None)]
            )
    return table(["set", "label length", "images", "reference %", "final %"], rows)


def _isa_words(m: BenchRecord) -> str:
    isa = m.machine.get("isa", [])
    vnni = {"avx512_vnni", "avx_vnni"} & set(isa)
    kind = "with VNNI" if vnni else "without VNNI" if "avx2" in isa else "no x86 int8 extension"
    return f"{m.machine['cpu']} ({', '.join(isa) or 'none'}: {kind})"


def profiles_table(metrics: dict[str, BenchRecord]) -> str:
    rows = []
    for target, m in metrics.items():
        for name, run in m.profiles.items():
            if run.how == "unavailable":
                rows.append([target, name, "not run here", DASH, DASH, DASH])
                continue
            cells = [
                f"{s} {pct(r.accuracy)} ({signed(-r.accuracy_drop_pts)} pts), ref "
                f"{fmt(r.agreement_reference, 3)}, here {fmt(r.agreement_build, 3)}"
                for s, r in run.sets.items()
            ]
            images = next(iter(run.sets.values())).images if run.sets else 0
            ok = fmt(run.within_budget)
            if run.conformance is not None:
                ok += f"; vectors {_vectors(run)}"
            rows.append([target, name, run.how, str(images), "; ".join(cells), ok])
        rows += client_rows(target, m)
    header = ["class", "profile", "ran", "images / set", "accuracy vs reference, agreement", "ok"]
    return table(header, rows) if rows else "No class declares a CPU profile."


def client_rows(target: str, m: BenchRecord) -> list[list[str]]:
    """The reference clients' rows: their own decoding, this machine's CPU."""
    rows = []
    for name, c in m.clients.items():
        if c.reason:
            rows.append([target, f"{name} ({c.runtime})", f"not run: {c.reason}", DASH, DASH, DASH])
            continue
        cells = [
            f"{s} {pct(r.accuracy)}, same text as Python {fmt(r.agreement_python, 3)}"
            for s, r in c.sets.items()
        ]
        images = next(iter(c.sets.values())).images if c.sets else 0
        check = "vectors pass" if c.conformance else f"vectors FAIL: {c.conformance_failure}"
        rows.append([target, f"{name} ({c.runtime})", "this machine, JS", str(images),
                     "; ".join(cells), check])  # fmt: skip
    return rows


def _vectors(run: ProfileRun) -> str:
    if run.conformance is None:
        return DASH
    diff = (
        f" (max diff {run.conformance_max_diff:.2g})"
        if run.conformance_max_diff is not None
        else ""
    )
    return f"pass{diff}" if run.conformance else f"FAIL: {run.conformance_failure}"


def runs_on_section(m: BenchRecord) -> str:
    """What each declared CPU profile reads through the shipped model (verify/<C>.json)."""
    if not m.profiles:
        return "The class declares no CPU profile (recipe `profiles:`)."
    sets = sorted({s for run in m.profiles.values() for s in run.sets})
    rows = []
    for name, run in m.profiles.items():
        if run.how == "unavailable":
            rows.append([name, f"not run: {run.reason}", *[DASH] * len(sets), DASH, DASH])
            continue
        how = "native" if run.how == "native" else f"emulated (`{run.emulator}`)"
        rows.append(
            [
                name,
                how,
                *[
                    f"{pct(r.accuracy)} ({fmt(r.accuracy_drop_pts, 1)} pts; ref "
                    f"{fmt(r.agreement_reference, 3)}, here {fmt(r.agreement_build, 3)}; "
                    f"max diff {r.max_abs_diff:.2g})"
                    if (r := run.sets.get(s))
                    else DASH
                    for s in sets
                ],
                fmt(run.within_budget),
                _vectors(run),
            ]
        )
    first = next((r for run in m.profiles.values() for r in run.sets.values()), None)
    n = first.images if first else 0
    notes = [f"- `{name}`: {run.note}" for name, run in m.profiles.items()]
    native = [name for name, run in m.profiles.items() if run.how == "native"]
    speed = (
        f"- Speed and memory figures above are {', '.join(native)}'s: measured on this machine."
        if native
        else f"- Speed and memory figures above come from this machine, {_isa_words(m)}, which is "
        "none of the class's profiles: they say nothing of the speed on its devices."
    )
    notes.append(speed)
    return "\n".join(
        [
            f"The shipped model on each CPU profile the class declares, on the first {n} images "
            f"of each evaluation set (one image = {100 / max(1, n):.2g} points). Each cell: "
            "accuracy (drop against the float reference on the same images; agreement with the "
            "reference's texts and with this machine's texts; largest output difference from "
            "this machine's). Emulation checks numerics only: no time is measured there.",
            "",
            table(["profile", "ran", *sets, "within budget", "conformance vectors"], rows),
            "",
            *notes,
            "",
            clients_section(m),
        ]
    )


def clients_section(m: BenchRecord) -> str:
    """The bundle through the JavaScript reference client (clients/js) on this machine."""
    if not m.clients:
        return ""
    rows = client_rows(m.target, m)
    return "\n".join(
        [
            "The JavaScript reference client (clients/js) reads the same image files itself "
            "(pngjs/jpeg-js decoding, the bundle's in-graph preprocessing, its own CTC decode) "
            "with onnxruntime-node and with onnxruntime-web (WebAssembly), on this machine:",
            "",
            table(["class", "client", "ran", "images / set", "accuracy, agreement", "check"], rows),
        ]
    )


def class_report(
    m: BenchRecord, build: BuildRecord, checks: CheckRecord, evaluation: EvalRecord
) -> str:
    parts = [
        f"# Device class `{m.target}`",
        m.description,
        facts(m),
        "## Variants",
        variants_table(m),
        "## Budgets",
        budgets_section(m),
        "## Session memory settings",
        memory_section(m),
        "## Compute floor",
        floor_section(m),
        "## Runs on (CPU profiles)",
        runs_on_section(m),
        "## Stages (divergence from checks.json, accuracy from eval.json)",
        stages_section(build, checks, evaluation),
    ]
    sens = sensitivity_sections(build)
    if sens:
        parts += ["## Quantization decision", *sens]
    parts += ["## Accuracy by label length", by_length_section(evaluation)]
    return "\n\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------- summary


def summary(
    metrics: dict[str, BenchRecord],
    preprocess: dict[str, Any] | None,
    choices: dict[str, dict[str, Any]],
    pictures: dict[str, str],
    serve: dict[str, Any] | None = None,
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
        f"### Against stock, same run on {_isa_words(first)} (median ratio, [min–max] over "
        "interleaved rounds)",
        ratios_table(metrics),
        "### What each CPU profile reads (verify stage: the shipped model, fixed subset)",
        profiles_table(metrics),
        "### Accuracy per evaluation set",
        accuracy_table(metrics),
        "### Baselines",
        baselines_table(metrics),
    ]
    if preprocess:
        parts += ["### Preprocessing candidates (reference model, per set)"]
        parts += [preprocess_table(preprocess, choices)]
    if serve:
        target = serve["bundle"]["target"]
        parts += [
            f"### Recognition server ({target} bundle) against stock ddddocr served the same way",
            serve_table(serve).strip(),
        ]
    if builds:
        parts += ["### Data the decisions used (build.json: sources)", data_table(builds)]
    if notes:
        parts += ["### Notes (params.yaml)", "\n".join(f"- {n}" for n in notes)]
    parts += [f"![{name}]({path})" for name, path in pictures.items()]
    parts.append(_machine_line(first))
    return "\n\n".join(parts) + "\n"


def data_table(builds: dict[str, BuildRecord]) -> str:
    """Per source: what its labels draw from, how well the source model reads it, and which
    classes decided on it; a synthetic set's accuracy says nothing of characters it never draws."""
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
        "RSS growth MB",
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
                fmt(b.rss_growth_mb, 1),
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
                    fmt(v.rss_growth_mb, 1),
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
        "RSS growth MB",
    ]
    return table(header, rows)


def preprocess_table(result: dict[str, Any], choices: dict[str, dict[str, Any]]) -> str:
    """Every candidate's cost and accuracy on every set, and which class chose it."""
    cands = result["candidates"]
    sets = list(result["images"])
    rows = []
    for name, row in cands.items():
        chosen = [c for c, settings in choices.items() if settings == row["settings"]]
        rows.append(
            [
                name,
                ", ".join(chosen) or DASH,
                fmt(row["preprocess_ms"], 3),
                fmt(row["import_rss_mb"], 1),
                *[pct(row["sets"][s]["accuracy"]) for s in sets],
            ]
        )
    unmatched = [c for c, s in choices.items() if all(s != r["settings"] for r in cands.values())]
    note = (
        f"\n\nNot among the candidates: {', '.join(unmatched)} (add their settings to "
        "params.yaml preprocess.candidates to measure them)."
        if unmatched
        else ""
    )
    header = ["candidate", "used by", "ms / image", "imports MB", *[f"{s} %" for s in sets]]
    images = ", ".join(f"{s} {n}" for s, n in result["images"].items())
    return table(header, rows) + f"\n\nImages per set: {images}." + note


def _budget_cell(m: BenchRecord) -> str:
    judged = [b.ok for b in m.budgets.values() if b.ok is not None]
    if not judged:
        return "none set"
    failed = [n for n, b in m.budgets.items() if b.ok is False]
    return f"{sum(judged)}/{len(judged)} ok" + (f" (missed: {', '.join(failed)})" if failed else "")


def _machine_line(m: BenchRecord) -> str:
    mach, ds = m.machine, m.dataset
    return (
        f"Measured on {mach['cpu']} ({', '.join(mach.get('isa', []))}; {mach['cores']} cores), "
        f"onnxruntime {mach['onnxruntime']}; each class's workers pinned to as many cores as its "
        f"intra-op threads; medians of {ds['repeats']} interleaved rounds of fresh processes, "
        f"{ds['timed_images']} images timed. Speed = stock warm p50 / bundle warm p50. Ratios "
        "differ between machines (int8 gains follow the CPU's VNNI support): rebuild to "
        "measure yours."
    )


def embed(readme_text: str, summary_md: str) -> str:
    """README text with everything between the summary markers replaced by `summary_md`."""
    i, j = readme_text.find(START), readme_text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ReportError(f"README needs the markers {START} and {END}, in that order")
    return readme_text[: i + len(START)] + "\n" + summary_md.strip() + "\n" + readme_text[j:]


# ---------------------------------------------------------------------------- plots


def pareto_rows(metrics: dict[str, BenchRecord]) -> list[dict[str, Any]]:
    return [
        {
            "target": t,
            "variant": name,
            "set": s,
            "warm_p50_ms": v.warm_p50_ms,
            "accuracy": r.accuracy,
        }
        for t, m in metrics.items()
        for name, v in m.variants.items()
        if v.warm_p50_ms is not None and not name.startswith(("mem:", "runtime_floor"))
        for s, r in v.sets.items()
    ]


def size_rows(metrics: dict[str, BenchRecord]) -> list[dict[str, Any]]:
    """Model size after each step: reference (source), every stage, final, bundle."""
    rows = []
    for t, m in metrics.items():
        for name, v in m.variants.items():
            skip = name in BASELINES or name.startswith(("mem:", "runtime_floor", "bundle"))
            if skip or v.size_mb is None:
                continue
            rows.append({"target": t, "step": name, "size_mb": v.size_mb})
        b = m.variants.get("bundle")
        if b is not None and b.ships_mb is not None:
            rows.append({"target": t, "step": "bundle ships", "size_mb": b.ships_mb})
            if b.optional_mb:
                rows.append({"target": t, "step": "bundle optional", "size_mb": b.optional_mb})
    return rows


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------- the stage


def load_class(metrics_dir: Path, builds: Path, target: str) -> tuple:
    m = read_record(metrics_dir / f"{target}.json", BenchRecord)
    b = read_record(builds / target / "model" / BUILD_FILE, BuildRecord)
    c = read_record(builds / target / CHECKS_FILE, CheckRecord)
    e = read_record(builds / target / "eval.json", EvalRecord)
    return m, b, c, e


def write_reports(
    targets: Sequence[str],
    metrics_dir: Path,
    builds: Path,
    reports_dir: Path,
    plots_dir: Path,
    notes: Sequence[str] = (),
) -> str:
    """Write every report, picture and plot file; returns the summary markdown."""
    loaded = {t: load_class(metrics_dir, builds, t) for t in targets}
    metrics = {t: m for t, (m, _, _, _) in loaded.items()}
    for t, (m, b, c, e) in loaded.items():
        write_text(reports_dir / f"{t}.md", class_report(m, b, c, e))
    pre_path = metrics_dir / "preprocess.json"
    preprocess = json.loads(pre_path.read_text()) if pre_path.is_file() else None
    choices = {
        t: json.loads((builds / t / "model" / RECIPE_FILE).read_text())["recipe"]["preprocess"]
        for t in targets
    }
    pictures = plots.write_pictures(pareto_rows(metrics), size_rows(metrics), plots_dir)
    rel = {n: f"{plots_dir.name}/{p.name}" for n, p in pictures.items()}
    serve_path = metrics_dir / "serve.json"
    serve = json.loads(serve_path.read_text()) if serve_path.is_file() else None
    builds_read = {t: b for t, (_, b, _, _) in loaded.items()}
    text = summary(metrics, preprocess, choices, rel, serve, notes, builds_read)
    inside = text.replace("](plots/", "](../plots/").replace("](reports/", "](")
    write_text(reports_dir / "summary.md", inside)
    sections = [("Summary", _html_ready(text))]
    sections += [(f"Class {t}", (reports_dir / f"{t}.md").read_text()) for t in targets]
    html = plots.page("ocr-bundles: measured results", sections, pictures)
    refs = plots.external_references(html)
    if refs:
        raise ReportError(f"the HTML page would fetch {refs}; it must stand alone")
    plots.write_page(reports_dir / "index.html", html)
    write_text(
        plots_dir / "pareto.csv",
        to_csv(pareto_rows(metrics), ("target", "variant", "set", "warm_p50_ms", "accuracy")),
    )
    write_text(plots_dir / "sizes.csv", to_csv(size_rows(metrics), ("target", "step", "size_mb")))
    return text


def _html_ready(markdown: str) -> str:
    """The summary without its image links: the page shows the pictures inline already."""
    return "\n".join(line for line in markdown.splitlines() if not line.startswith("!["))


def embed_file(readme: Path, summary_md: str) -> None:
    write_text(readme, embed(readme.read_text(encoding="utf-8"), summary_md))
