"""The report stage: metrics/<C>.json (+ build records) -> reports/<C>.md, reports/summary.md and
the CSVs behind `dvc plots` (plots/pareto.csv, plots/sizes.csv).

The summary has no top-level heading so it can sit inside README between the markers
`<!-- summary:start -->` and `<!-- summary:end -->` (see `embed`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import modelio
from .bench import ratios
from .errors import PipelineError

START, END = "<!-- summary:start -->", "<!-- summary:end -->"
DASH = "–"


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


def generic_table(data: Any) -> str:
    """Any JSON-ish record set as a table: a list of dicts, a dict of dicts or of scalars."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        cols = list(dict.fromkeys(k for r in data for k in r))
        return table(cols, [[_cell(r.get(c)) for c in cols] for r in data])
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        cols = list(dict.fromkeys(k for v in data.values() for k in v))
        return table(["", *cols], [[k, *(_cell(v.get(c)) for c in cols)] for k, v in data.items()])
    if isinstance(data, dict):
        return table(["key", "value"], [[k, _cell(v)] for k, v in data.items()])
    return "```json\n" + json.dumps(data, indent=1) + "\n```"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return DASH if v is None else json.dumps(v) if isinstance(v, dict | list) else str(v)


# ---------------------------------------------------------------------------- per class


def timed_figures(v: dict[str, Any]) -> list[str]:
    p95 = f" ({fmt(v.get('warm_p95_ms'), 2)})" if v.get("warm_p95_ms") is not None else ""
    return [
        fmt(v.get("cold_start_ms"), 0),
        f"{fmt(v.get('warm_p50_ms'), 2)}{p95}",
        fmt(v.get("model_p50_ms"), 2),
        fmt(v.get("peak_rss_mb"), 0),
    ]


def vs_cell(v: dict[str, Any], stock: dict[str, Any] | None) -> str:
    """size x, speed x, accuracy pts (signed: + means better than stock_beta)."""
    if stock is None or stock.get("skipped") or v.get("skipped"):
        return DASH
    r = ratios(v, stock)
    drop = r["accuracy_drop_pts"]
    acc = signed(-drop) if drop is not None else DASH
    return f"{fmt(r['size'], 2)}×, {fmt(r['warm_speedup'], 2)}×, {acc} pts"


def variants_table(m: dict[str, Any]) -> str:
    stock = m["variants"].get("stock_beta")
    header = [
        "variant",
        "size MB",
        "cold start ms",
        "warm p50 ms (p95)",
        "model ms",
        "peak RSS MB",
        "accuracy %",
        "vs stock_beta (size, speed, accuracy)",
    ]
    rows = []
    for name, v in m["variants"].items():
        if v.get("skipped"):
            rows.append([f"{name} (skipped)", fmt(v.get("size_mb"), 2), *[DASH] * 6])
            continue
        rows.append(
            [
                f"**{name}**" if name == "final" else name,
                fmt(v.get("size_mb"), 2),
                *timed_figures(v),
                pct(v.get("accuracy")),
                vs_cell(v, stock),
            ]
        )
    return table(header, rows)


def facts(m: dict[str, Any]) -> str:
    mach, ds = m["machine"], m["dataset"]
    w, h = ds["image_size_median"]
    lo, hi = ds["label_length"]
    return "\n".join(
        [
            f"- Machine: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable), "
            f"onnxruntime {mach['onnxruntime']}, Python {mach['python']}, "
            f"ddddocr {mach['ddddocr']}.",
            f"- Threads: {m['threads']} intra-op; every worker pinned to CPU(s) "
            f"{m['affinity']} before importing onnxruntime (reported: {m['worker_affinity']}).",
            f"- Dataset: {ds['eval_images']} evaluation images (median {w}×{h} px, labels "
            f"{lo}–{hi} chars). Timings: {ds['timed_images']} images after {ds['warmup']} "
            f"warm-up calls, median of {ds['repeats']} interleaved rounds, each a fresh process.",
            "- Cold start: spawn to first recognized text (imports, load, first image), "
            "page cache warm. Warm: image bytes to text. Model: session.run only.",
            "- Stock ddddocr passes no session options; its onnxruntime pool gets the class's "
            "core count (what onnxruntime picks on such a device) instead of one thread per "
            "machine core pinned outside the affinity. Bundle size counts every file in the "
            "bundle folder (model, .ort copy, fallback model).",
            "- reference is the source model fed as ddddocr feeds it (pipeline.yaml defaults); "
            "every stage model is fed with this class's preprocessing, so a class that changes "
            "preprocessing differs from reference already at its first, exact stage.",
            "- runtime_floor: the final variant's process (Python, numpy, onnxruntime, the "
            "preprocessing backend, the session options) around a do-nothing model: the cold "
            "start and memory no model optimization can remove.",
        ]
    )


def budgets_section(m: dict[str, Any]) -> str:
    rows = [
        [name, fmt(b["limit"], 2), fmt(b["value"], 2), DASH if b["ok"] is None else _ok(b["ok"])]
        for name, b in m["budgets"].items()
    ]
    return table(["budget (final)", "limit", "value", "ok"], rows)


def _ok(ok: bool) -> str:
    return "✅" if ok else "❌ over"


def floor_section(m: dict[str, Any]) -> str:
    f = m["compute_floor"]
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


def stages_section(m: dict[str, Any], build: dict[str, Any]) -> str:
    rows = []
    for st in build.get("stages", []):
        name = Path(st["file"]).stem
        v = m["variants"].get(name, {})
        rows.append(
            [
                name,
                st.get("pass", DASH),
                fmt(st.get("size_mb"), 2),
                fmt(st.get("seconds"), 1),
                _cell(st.get("max_abs_diff")),
                fmt(st.get("argmax_agreement"), 4),
                pct(v.get("accuracy")),
                pct(v.get("agreement")),
            ]
        )
    header = [
        "stage",
        "pass",
        "size MB",
        "build s",
        "max abs diff",
        "argmax agreement",
        "accuracy %",
        "agrees with reference %",
    ]
    return table(header, rows)


def by_length_section(evaluation: dict[str, Any]) -> str:
    ref = evaluation["variants"]["reference"]["by_length"]
    fin = evaluation["variants"]["final"]["by_length"]
    keys = sorted(set(ref) | set(fin), key=int)
    rows = [
        [
            k,
            str(ref.get(k, fin.get(k, {})).get("n", DASH)),
            pct(ref.get(k, {}).get("accuracy")),
            pct(fin.get(k, {}).get("accuracy")),
        ]
        for k in keys
    ]
    return table(["label length", "images", "reference %", "final %"], rows)


def sensitivity_sections(build: dict[str, Any]) -> list[str]:
    out = []
    for st in build.get("stages", []):
        if "sensitivity" in st:
            out.append(f"### {Path(st['file']).stem}\n\n{generic_table(st['sensitivity'])}")
    return out


def class_report(m: dict[str, Any], build: dict[str, Any], evaluation: dict[str, Any]) -> str:
    skipped = [f"- {n}: {v['skipped']}" for n, v in m["variants"].items() if v.get("skipped")]
    parts = [
        f"# Device class `{m['target']}`",
        m.get("description", ""),
        facts(m),
        "## Variants",
        variants_table(m),
        "\n".join(["Skipped:", *skipped]) if skipped else "",
        "## Budgets",
        budgets_section(m),
        "## Compute floor",
        floor_section(m),
        "## Stages (divergence from build.json)",
        stages_section(m, build),
        "## Accuracy by label length",
        by_length_section(evaluation),
    ]
    sens = sensitivity_sections(build)
    if sens:
        parts += ["## Sensitivity", *sens]
    return "\n\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------- summary


def summary(metrics: dict[str, dict[str, Any]]) -> str:
    """Across classes: the final model of each, against stock ddddocr measured the same way."""
    header = [
        "class",
        "threads",
        "size MB",
        "cold start ms",
        "warm p50 ms (p95)",
        "model ms",
        "peak RSS MB",
        "accuracy %",
        "vs stock_beta (size, speed, accuracy)",
        "budgets",
    ]
    rows = []
    for target, m in metrics.items():
        fin = m["variants"]["final"]
        rows.append(
            [
                f"[{target}](reports/{target}.md)",
                str(m["threads"]),
                fmt(fin.get("size_mb"), 2),
                *timed_figures(fin),
                pct(fin.get("accuracy")),
                vs_cell(fin, m["variants"].get("stock_beta")),
                _budget_cell(m["budgets"]),
            ]
        )
    first = next(iter(metrics.values()))
    parts = [
        "### Results per device class (final model)",
        table(header, rows),
        "### Against stock_beta, same run (median ratio, [min–max] over interleaved rounds)",
        ratios_table(metrics),
        "### Baselines",
        baselines_table(metrics),
        _machine_line(first),
    ]
    return "\n\n".join(parts) + "\n"


def ratios_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Ratios of final to stock_beta with their per-round spread, beside what the runtime
    alone (runtime_floor: the same process around a do-nothing model) already costs."""
    rows = []
    for target, m in metrics.items():
        r, spread = m.get("ratios"), m.get("ratios_spread") or {}
        if not r:
            continue
        stock = m["variants"].get("stock_beta", {})
        floor = m["variants"].get("runtime_floor", {})
        rows.append(
            [
                target,
                f"{fmt(r['size'], 3)}×",
                _with_spread(r["warm_speedup"], spread.get("warm_speedup")),
                _with_spread(r["cold_start"], spread.get("cold_start")),
                _with_spread(r["peak_rss"], spread.get("peak_rss")),
                _gain_pts(r["accuracy_drop_pts"]),
                _floor_cell(floor, stock),
            ]
        )
    header = [
        "class",
        "size",
        "warm speedup",
        "cold start",
        "peak RSS",
        "accuracy",
        "runtime floor (cold start, RSS)",
    ]
    return table(header, rows)


def _gain_pts(drop: float | None) -> str:
    return DASH if drop is None else f"{signed(-drop)} pts"


def _with_spread(value: float | None, spread: list[float] | None) -> str:
    if value is None:
        return DASH
    # three decimals: the inputs are rounded medians, so two would make a median ratio look
    # outside its own per-round spread
    return f"{value:.3f}× [{spread[0]:.3f}–{spread[1]:.3f}]" if spread else f"{value:.3f}×"


def _floor_cell(floor: dict[str, Any], stock: dict[str, Any]) -> str:
    try:
        cold = floor["cold_start_ms"] / stock["cold_start_ms"]
        rss = floor["peak_rss_mb"] / stock["peak_rss_mb"]
    except (KeyError, TypeError):
        return DASH  # not measured in this run (skipped floor or stock)
    return f"{cold:.2f}×, {rss:.2f}×"


def baselines_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Stock and naive variants, one row per class they were timed in (pinning differs)."""
    rows = []
    for target, m in metrics.items():
        for name in ("stock_beta", "stock_default", "naive_int8", "reference"):
            v = m["variants"].get(name)
            if v is None or v.get("skipped"):
                continue
            rows.append(
                [name, target, fmt(v["size_mb"], 2), *timed_figures(v), pct(v.get("accuracy"))]
            )
    header = [
        "variant",
        "timed as class",
        "size MB",
        "cold start ms",
        "warm p50 ms (p95)",
        "model ms",
        "peak RSS MB",
        "accuracy %",
    ]
    return table(header, rows)


def _budget_cell(budgets: dict[str, Any]) -> str:
    judged = [b["ok"] for b in budgets.values() if b["ok"] is not None]
    if not judged:
        return "none set"
    return f"{sum(judged)}/{len(judged)} ok"


def _machine_line(m: dict[str, Any]) -> str:
    mach, ds = m["machine"], m["dataset"]
    return (
        f"Measured on {mach['cpu']} ({mach['cores']} cores), onnxruntime {mach['onnxruntime']}; "
        f"each class's workers pinned to as many cores as its intra-op threads; medians of "
        f"{ds['repeats']} interleaved rounds of fresh processes, {ds['timed_images']} of "
        f"{ds['eval_images']} evaluation images timed. Speed = stock warm p50 / variant warm p50."
    )


def embed(readme_text: str, summary_md: str) -> str:
    """README text with everything between the summary markers replaced by `summary_md`."""
    i, j = readme_text.find(START), readme_text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ReportError(f"README needs the markers {START} and {END}, in that order")
    return readme_text[: i + len(START)] + "\n" + summary_md.strip() + "\n" + readme_text[j:]


# ---------------------------------------------------------------------------- plots


def pareto_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "target": t,
            "variant": name,
            "warm_p50_ms": v["warm_p50_ms"],
            "accuracy": v["accuracy"],
        }
        for t, m in metrics.items()
        for name, v in m["variants"].items()
        if v.get("warm_p50_ms") is not None and v.get("accuracy") is not None
    ]


def size_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Model size after each step: reference (source), every stage, final, bundle."""
    rows = []
    for t, m in metrics.items():
        for name, v in m["variants"].items():
            skip = v.get("kind") == "stock" or name in ("naive_int8", "runtime_floor")
            if skip or v.get("size_mb") is None:
                continue
            rows.append({"target": t, "step": f"{t}/{name}", "size_mb": v["size_mb"]})
    return rows


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------- the stage


def write_reports(
    targets: Sequence[str],
    metrics_dir: Path,
    build_dir: Path,
    reports_dir: Path,
    plots_dir: Path,
) -> str:
    """Write every report and plot file; returns the summary markdown."""
    metrics = {t: _load(metrics_dir / f"{t}.json") for t in targets}
    for t, m in metrics.items():
        build = _load(build_dir / t / "model" / "build.json")
        evaluation = _load(build_dir / t / "eval.json")
        _write_text(reports_dir / f"{t}.md", class_report(m, build, evaluation))
    text = summary(metrics)
    _write_text(reports_dir / "summary.md", text)
    _write_text(
        plots_dir / "pareto.csv",
        to_csv(pareto_rows(metrics), ("target", "variant", "warm_p50_ms", "accuracy")),
    )
    _write_text(plots_dir / "sizes.csv", to_csv(size_rows(metrics), ("target", "step", "size_mb")))
    return text


def embed_file(readme: Path, summary_md: str) -> None:
    _write_text(readme, embed(readme.read_text(encoding="utf-8"), summary_md))


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; run the stage that writes it first") from None


def _write_text(path: Path, text: str) -> None:
    modelio.write_bytes(path, text.encode("utf-8"))
