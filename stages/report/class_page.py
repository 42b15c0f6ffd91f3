"""The per-class page, reports/<C>.md: facts of the run, variants, budgets, memory settings,
compute floor, CPU profiles and clients, stages, the quantization decision, the levers measured,
accuracy by length."""

from __future__ import annotations

from ..records import (
    BenchRecord,
    BuildRecord,
    CheckRecord,
    EvalRecord,
    LeverRecord,
    ProfileRun,
    VariantEval,
)
from .format import (
    DASH,
    GROWTH_HEADER,
    acc_cells,
    change_cell,
    edge_words,
    fmt,
    growth_cell,
    isa_words,
    on_the_edge,
    pct,
    same_machine,
    set_names,
    signed,
    table,
)
from .levers import Limits, levers_section


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
        GROWTH_HEADER,
        *[f"{s} %" for s in sets],
    ]
    rows = []
    for name, v in m.variants.items():
        if v.skipped:
            rows.append([f"{name} (skipped: {v.skipped})", fmt(v.size_mb, 2), *[DASH] * 7])
            continue
        parts = f"({fmt(v.import_ms, 0)} / {fmt(v.session_ms, 0)} / {fmt(v.first_ms, 0)})"
        label = f"**{name}**" if name in ("final", "bundle") else name
        if v.timed_with:
            label += f" (same bytes as {v.timed_with}: its timings)"
        if v.accuracy_source:
            label += f" (accuracy: {v.accuracy_source})"
        rows.append(
            [
                label,
                fmt(v.ships_mb if v.ships_mb is not None else v.size_mb, 2),
                f"{fmt(v.cold_start_ms, 0)} {parts}",
                f"{fmt(v.warm_p50_ms, 2)} ({fmt(v.warm_p95_ms, 2)})",
                fmt(v.model_p50_ms, 2),
                fmt(v.peak_rss_mb, 0),
                f"{fmt(v.attributable_cold_start_ms, 0)}, {fmt(v.attributable_peak_rss_mb, 1)}",
                fmt(v.cpu_s_per_1000, 2),
                growth_cell(v),
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


def budget_cut(ds: dict, who: str = "This machine") -> str:
    """A sentence when the bench's time budget cut its rounds or long sessions (budget.py)."""
    asked = ds.get("asked")
    if not asked:
        return ""
    return (
        f" {who} ran {ds['repeats']} rounds and long sessions of {ds['long_session']} "
        f"calls where params.yaml asks {asked['repeats']} and {asked['long_session']}: as "
        f"asked, the bench would have taken ~{ds['projected_minutes']} min here, over "
        f"`bench.budget_minutes` {ds['budget_minutes']:g}."
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
            f"{ds['long_session']} calls in one process {long_scope(ds)}, and in parentheses "
            "over their second half alone (a leak grows there too; a one-time step of the "
            f"first calls, such as a lazily loaded fallback, does not).{budget_cut(ds)}",
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
    edge = on_the_edge(m)
    rows = [
        [
            name + (f" ({b.set})" if b.set else ""),
            fmt(b.limit, 2),
            fmt(b.value, 2),
            _ok_cell(name, b.ok, edge.get(name)),
        ]
        for name, b in m.budgets.items()
    ]
    note = (
        "\n\nA ratio budget is judged on the median of the interleaved rounds; one whose "
        "limit lies between its rounds' lowest and highest ratio is on the edge: another run "
        "of this machine may judge it the other way."
        if edge
        else ""
    )
    return table(["budget (the bundle)", "limit", "value", "ok"], rows) + note


def _ok_cell(name: str, ok: bool | None, edge: list[float] | None) -> str:
    if ok is None:
        return DASH
    cell = "✅" if ok else _miss(name)
    return f"{cell} ({edge_words(edge)})" if edge else cell


def _miss(budget: str) -> str:
    return "❌ under" if budget.startswith("min_") else "❌ over"


def memory_section(m: BenchRecord) -> str:
    if not m.memory_settings:
        return "No memory-setting variants were measured."
    rows = [
        [
            r.setting,
            fmt(r.cold_start_ms, 0),
            fmt(r.peak_rss_mb, 1),
            growth_cell(r),
            fmt(r.warm_p50_ms, 2),
            signed(r.peak_rss_delta_mb),
            signed(r.cold_start_delta_ms, 0),
            signed(r.warm_p50_delta_ms, 2),
        ]
        for r in m.memory_settings
    ]
    header = [
        "session setting (shipped file)",
        "cold start ms",
        "peak RSS MB",
        GROWTH_HEADER,
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


def _checked(exact: bool, v: VariantEval | None) -> str:
    if v is not None and v.texts_of:
        return f"exact; {v.checked_images} per set read as {v.texts_of}: its texts"
    return "exact" if exact else "lossy"


def stages_section(build: BuildRecord, checks: CheckRecord, evaluation: EvalRecord) -> str:
    sets = list(evaluation.sets)
    rows = []
    for st in build.stages:
        v = evaluation.variants.get(st.stem)
        c = checks.of(st.file)
        rows.append(
            [
                st.stem,
                _checked(st.exact, v),
                fmt(st.size_mb, 2),
                f"{c.max_abs_diff:.3g}" if c else DASH,
                fmt(c.argmax_agreement, 4) if c else DASH,
                *[
                    f"{pct(v.sets[s].accuracy)} ({pct(v.sets[s].agreement)}); "
                    f"{change_cell(v.sets[s].change)}"
                    if v
                    else DASH
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
        *[f"{s}: accuracy % (agrees with reference %); vs its input: agreement, -/+" for s in sets],
    ]
    return table(header, rows)


def sensitivity_sections(build: BuildRecord, checks: CheckRecord) -> list[str]:
    out = []
    for st in build.stages:
        rep = st.tolerance()
        if rep is None:
            continue
        check = checks.of(st.file)
        found = check.sensitivity(st.pass_name) if check else []
        # MACs only where the search ranked by sensitivity per MAC
        per_mac = any(s.macs is not None for s in found)
        rows = [
            [
                s.node,
                s.op_type,
                s.group,
                f"{s.rel_mse:.3g}",
                *([fmt(s.macs, 0)] if per_mac else []),
                fmt(s.quantized),
            ]
            for s in found
        ]
        cols = ["node", "op", "group", "rel. MSE", *(["MACs"] if per_mac else []), "quantized"]
        sens = table(cols, rows)
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
        ranked = (
            "Sensitivity (output error when only this node is quantized, on calibration images "
            "of every source; checks.json: its last digits follow the build CPU's kernels):"
            f"\n\n{sens}"
            if rows
            else "Sensitivity: none recorded (the search ranks nodes only when the fully "
            "quantized model misses the tolerance, or with `always_rank: true`)."
        )
        out.append(
            f"### {st.stem}\n\nValidation accuracy of the input model: {ref}. A variant is "
            f"accepted only when every set is within tolerance.\n\n{steps}\n\nKept float:\n\n"
            f"{why}\n\n{ranked}"
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


def vectors_cell(run: ProfileRun) -> str:
    if run.conformance is None:
        return DASH
    diff = (
        f" (max diff {run.conformance_max_diff:.2g})"
        if run.conformance_max_diff is not None
        else ""
    )
    return f"pass{diff}" if run.conformance else f"FAIL: {run.conformance_failure}"


def ran_elsewhere(m: BenchRecord) -> str | None:
    """The CPU that ran the verify stage when it is not the bench's: a build on another x86
    kind keeps verify's record (machine.json `numerics`), whose native and float runs were
    that machine's."""
    vm = m.profiles_machine
    if same_machine(vm, m.machine, ("cpu", "isa")):
        return None
    return str(vm.get("cpu", "another machine"))


def runs_on_section(m: BenchRecord) -> str:
    """What each declared CPU profile reads through the shipped model (verify/<C>.json)."""
    if not m.profiles:
        return "The class declares no CPU profile (recipe `profiles:`)."
    sets = sorted({s for run in m.profiles.values() for s in run.sets})
    vm = m.profiles_machine
    elsewhere = ran_elsewhere(m)
    same = elsewhere is None
    here = elsewhere or "this machine"
    rows = []
    for name, run in m.profiles.items():
        if run.how == "unavailable":
            rows.append([name, f"not run: {run.reason}", *[DASH] * len(sets), DASH, DASH])
            continue
        how = {
            "native": "native" if same else f"native on {here}",
            "float": f"{here}'s run ({run.reason})",
        }.get(run.how, f"emulated (`{run.emulator}`)")
        rows.append(
            [
                name,
                how,
                *[
                    f"{pct(r.accuracy)} ({fmt(r.accuracy_drop_pts, 1)} pts; ref "
                    f"{fmt(r.agreement_reference, 3)}, build {fmt(r.agreement_build, 3)}; "
                    f"max diff {r.max_abs_diff:.2g})"
                    if (r := run.sets.get(s))
                    else DASH
                    for s in sets
                ],
                fmt(run.within_budget),
                vectors_cell(run),
            ]
        )
    first = next((r for run in m.profiles.values() for r in run.sets.values()), None)
    n = first.images if first else 0
    notes = [f"- `{name}`: {run.note}" for name, run in m.profiles.items()]
    native = [name for name, run in m.profiles.items() if run.how == "native" and same]
    speed = (
        f"- Speed and memory figures above are {', '.join(native)}'s: measured on this machine."
        if native
        else f"- Speed and memory figures above come from this machine, "
        f"{isa_words(m.machine)}, which is none of the class's profiles: they say nothing of "
        "the speed on its devices."
    )
    notes.append(speed)
    return "\n".join(
        [
            f"The shipped model on each CPU profile the class declares, on the first {n} images "
            f"of each evaluation set (one image = {100 / max(1, n):.2g} points). Each cell: "
            "accuracy (drop against the float reference on the same images; agreement with the "
            "reference's texts and with the build's: its final model on x86-64 with exact int8 "
            "kernels, which is what the accuracy tables above read on every x86 machine; "
            "largest output difference from the build's). Emulation checks numerics only: no "
            f"time is measured there. Run on {isa_words(vm) if vm else 'this machine'}; "
            "another x86 build machine keeps these runs (machine.json `numerics`), and what "
            "its own CPU reads through the bundle is the bundle row's accuracy above.",
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
    m: BenchRecord,
    build: BuildRecord,
    checks: CheckRecord,
    evaluation: EvalRecord,
    levers: LeverRecord | None = None,
    limits: Limits | None = None,
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
    sens = sensitivity_sections(build, checks)
    if sens:
        parts += ["## Quantization decision", *sens]
    lev = levers_section(levers, limits)
    if lev:
        parts += ["## Levers: what each quantization option buys", *lev]
    parts += ["## Accuracy by label length", by_length_section(evaluation)]
    return "\n\n".join(p for p in parts if p) + "\n"
