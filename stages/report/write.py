"""The report stage's files: reads metrics/<C>.json and the build records, writes
reports/<C>.md, reports/summary.md, reports/index.html (one self-contained page that opens
offline), the pictures plots/pareto.png and plots/sizes.png and the CSVs behind `dvc plots`, and
embeds the summary in README between the markers `<!-- summary:start -->` and
`<!-- summary:end -->` (see `embed`). Reads records through their typed models; loads no model.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import PipelineError
from ..params import LeverParams
from ..records import (
    BUILD_FILE,
    CHECKS_FILE,
    RECIPE_FILE,
    BenchRecord,
    BuildRecord,
    CheckRecord,
    EvalRecord,
    LeverRecord,
    PreprocessRecord,
    RecipeFile,
    ServeRecord,
    read_record,
)
from . import plots
from .class_page import class_report
from .levers import limits_of
from .summary import BASELINES, summary

START, END = "<!-- summary:start -->", "<!-- summary:end -->"


class ReportError(PipelineError):
    """An input of the report is missing or a README lacks the summary markers."""


def embed(readme_text: str, summary_md: str) -> str:
    """README text with everything between the summary markers replaced by `summary_md`."""
    i, j = readme_text.find(START), readme_text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ReportError(f"README needs the markers {START} and {END}, in that order")
    return readme_text[: i + len(START)] + "\n" + summary_md.strip() + "\n" + readme_text[j:]


# ---------------------------------------------------------------------------- plots data


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
    lever_path = metrics_dir / "levers" / f"{target}.json"
    lev = read_record(lever_path, LeverRecord) if lever_path.is_file() else None
    return m, b, c, e, lev


def write_reports(
    targets: Sequence[str],
    metrics_dir: Path,
    builds: Path,
    reports_dir: Path,
    plots_dir: Path,
    notes: Sequence[str] = (),
    agreement_goal: float = LeverParams.model_fields["agreement_goal"].default,
) -> str:
    """Write every report, picture and plot file; returns the summary markdown."""
    loaded = {t: load_class(metrics_dir, builds, t) for t in targets}
    metrics = {t: m for t, (m, *_) in loaded.items()}
    for t, (m, b, c, e, lev) in loaded.items():
        limits = limits_of(m, lev, agreement_goal) if lev is not None else None
        write_text(reports_dir / f"{t}.md", class_report(m, b, c, e, lev, limits))
    pre_path = metrics_dir / "preprocess.json"
    preprocess = read_record(pre_path, PreprocessRecord) if pre_path.is_file() else None
    choices = {
        t: read_record(builds / t / "model" / RECIPE_FILE, RecipeFile).recipe["preprocess"]
        for t in targets
    }
    pictures = plots.write_pictures(pareto_rows(metrics), size_rows(metrics), plots_dir)
    rel = {n: f"{plots_dir.name}/{p.name}" for n, p in pictures.items()}
    serve_path = metrics_dir / "serve.json"
    serve = read_record(serve_path, ServeRecord) if serve_path.is_file() else None
    builds_read = {t: b for t, (_, b, *_) in loaded.items()}
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
