"""The report stage on records the real stages wrote (the `measured` fixture): class pages,
the summary, the quantization decision, the pictures, the offline page, README embedding."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from stages import report
from stages.errors import PipelineError
from stages.records import (
    BenchRecord,
    BuildRecord,
    CheckRecord,
    EvalRecord,
    read_record,
    write_record,
)
from stages.report import plots
from stages.report.format import signed, times


@pytest.fixture(scope="module")
def written(measured: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    text = report.write_reports(
        measured["targets"], measured["metrics"], measured["builds"], out / "reports", out / "plots"
    )
    return {"out": out, "text": text, **measured}


def page(written: dict, name: str) -> str:
    return (written["out"] / "reports" / name).read_text(encoding="utf-8")


def test_class_report_has_every_section(written: dict) -> None:
    text = page(written, "low.md")
    for heading in (
        "## Variants",
        "## Budgets",
        "## Session memory settings",
        "## Compute floor",
        "## Stages",
        "## Quantization decision",
        "## Accuracy by label length",
    ):
        assert heading in text, heading
    assert "| **bundle** |" in text and "| runtime_floor_bundle |" in text
    assert "clean %" in text and "hard %" in text  # accuracy per evaluation set
    assert "max_attributable_rss_ratio" in text and "❌ over" in text


def test_quantization_decision_comes_from_the_real_build_record(written: dict) -> None:
    """build.json stores the pass's decision under stages[i].report and checks.json its
    measured sensitivities (they follow the build CPU's kernels); the report reads both through
    their records' types, so the shape cannot drift unnoticed."""
    build = read_record(written["builds"] / "low" / "model" / "build.json", BuildRecord)
    decision = build.stages[-1].tolerance()
    assert decision is not None and not decision.sensitivity  # not in the model folder
    checks = read_record(written["builds"] / "low" / "checks.json", CheckRecord)
    rows = checks.of(build.stages[-1].file).sensitivity(build.stages[-1].pass_name)
    assert rows
    text = page(written, "low.md")
    for row in rows:
        assert f"| {row.node} | {row.op_type} | {row.group} | {row.rel_mse:.3g} |" in text
    assert "A variant is accepted only when every set is within tolerance" in text
    assert "clean acc % (agreement)" in text and "hard acc % (agreement)" in text
    assert "Kept float:" in text
    assert "## Quantization decision" not in page(written, "high.md")  # no such pass there


def test_quantization_decision_without_a_ranking_says_so(written: dict) -> None:
    """A decision with no sensitivity recorded (the fully quantized model met the tolerance, so
    nothing was ranked): the page says so instead of printing an empty table."""
    from stages.report.class_page import sensitivity_sections

    build = read_record(written["builds"] / "low" / "model" / "build.json", BuildRecord)
    checks = read_record(written["builds"] / "low" / "checks.json", CheckRecord)
    ranked = "\n".join(sensitivity_sections(build, checks))
    assert "| node | op | group | rel. MSE |" in ranked and "none recorded" not in ranked
    unranked = "\n".join(sensitivity_sections(build, checks.model_copy(update={"stages": []})))
    assert "Sensitivity: none recorded" in unranked and "| node | op |" not in unranked
    assert "Kept float:" in unranked


def test_summary_rows_per_class_and_per_set(written: dict) -> None:
    text = written["text"]
    assert not text.startswith("# ")  # embeddable in README: no page title
    assert "| [high](reports/high.md) | 1 |" in text and "| [low](reports/low.md) | 1 |" in text
    assert "### Against stock, same run" in text and "CPU / 1000" in text
    assert "clean +" in text or "clean -" in text or "clean –" in text
    assert "| stock | " in text and "| naive_int8 | " in text
    assert "### Preprocessing candidates" in text
    assert "| contract | high, low |" in text  # both classes use the contract's preprocessing
    assert "![pareto](plots/pareto.png)" in text
    # inside reports/, the same summary links to its neighbours and to ../plots
    inside = page(written, "summary.md")
    assert "](../plots/pareto.png)" in inside and "| [low](low.md) |" in inside


def test_fidelity_rows_name_the_float_model_each_class_quantizes(written: dict) -> None:
    text = written["text"]
    assert "### Fidelity: what each class's final model reads against the float model" in text
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    for target in written["targets"]:
        evaluation = read_record(written["builds"] / target / "eval.json", EvalRecord)
        change = evaluation.variants["final"].sets["clean"].change
        cells = f"| {target} | {change.against} | {change.agreement:.3f}, -{change.right_to_wrong}"
        assert any(r.startswith(cells) for r in rows), (target, change)


def test_pictures_are_real_images(written: dict) -> None:
    for name in ("pareto.png", "sizes.png"):
        with Image.open(written["out"] / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_offline_page_references_nothing_outside_itself(written: dict) -> None:
    html = page(written, "index.html")
    assert plots.external_references(html) == []
    assert html.count("data:image/png;base64,") == 2
    assert "<table>" in html and "Class low" in html


def test_plot_csvs_for_dvc_plots(written: dict) -> None:
    rows = list(csv.DictReader(io.StringIO((written["out"] / "plots" / "pareto.csv").read_text())))
    assert {r["set"] for r in rows} == {"clean", "hard"}
    assert {"stock", "final", "bundle"} <= {r["variant"] for r in rows}
    assert not any(r["variant"].startswith(("mem:", "runtime_floor")) for r in rows)
    sizes = (written["out"] / "plots" / "sizes.csv").read_text().splitlines()
    assert sizes[0] == "target,step,size_mb" and "low,bundle ships," in "\n".join(sizes)


def test_a_missing_record_is_a_clear_error(written: dict, tmp_path: Path) -> None:
    shutil.copytree(written["metrics"], tmp_path / "metrics")
    (tmp_path / "metrics" / "low.json").unlink()
    with pytest.raises(PipelineError, match=r"low.json: missing"):
        report.write_reports(["low"], tmp_path / "metrics", written["builds"], tmp_path, tmp_path)


def test_a_record_of_another_shape_is_refused(written: dict, tmp_path: Path) -> None:
    shutil.copytree(written["metrics"], tmp_path / "metrics")
    data = json.loads((tmp_path / "metrics" / "low.json").read_text())
    data["variants"]["final"]["accuracy"] = 0.9  # the old flat shape
    (tmp_path / "metrics" / "low.json").write_text(json.dumps(data))
    with pytest.raises(
        PipelineError, match=r"not a valid BenchRecord \(variants\.final\.accuracy: Extra inputs"
    ):
        report.write_reports(["low"], tmp_path / "metrics", written["builds"], tmp_path, tmp_path)


def test_records_round_trip(written: dict) -> None:
    path = written["metrics"] / "low.json"
    record = read_record(path, BenchRecord)
    assert json.loads(path.read_text()) == record.model_dump(mode="json", by_alias=True)


README = "# Title\n\nintro\n\n<!-- summary:start -->\nold\n<!-- summary:end -->\n\nafter\n"


def test_embed_replaces_only_between_the_markers() -> None:
    out = report.embed(README, "| new |\n")
    assert out == (
        "# Title\n\nintro\n\n<!-- summary:start -->\n| new |\n<!-- summary:end -->\n\nafter\n"
    )
    assert report.embed(out, "| new |\n") == out  # idempotent


def test_embed_needs_both_markers_in_order() -> None:
    with pytest.raises(report.ReportError, match="summary:start"):
        report.embed("# no markers\n", "x")
    with pytest.raises(report.ReportError):
        report.embed("<!-- summary:end --> <!-- summary:start -->", "x")


def test_embed_file_rewrites_the_readme(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(README)
    report.embed_file(path, "fresh")
    assert "<!-- summary:start -->\nfresh\n<!-- summary:end -->" in path.read_text()


def test_times_shows_three_decimals_and_the_spread() -> None:
    assert times(4.1, [3.9, 4.3]) == "4.100× [3.900–4.300]"
    assert times(None) == "–"
    assert signed(-0.0) == "+0.0"


def test_the_server_bench_gets_its_own_section(measured: dict, tmp_path: Path) -> None:
    """metrics/serve.json, written by the real server bench on the tiny high bundle, becomes
    a summary section; without it there is none."""
    from stages.measure.serve_bench import serve_bench

    images = sorted((measured["root"] / "data" / "clean" / "eval").glob("*.png"))
    result = serve_bench(
        measured["root"] / "bundles" / "high", images, [1], 6, [False], stock=False, warmup=1
    )
    shutil.copytree(measured["metrics"], tmp_path / "metrics")
    write_record(tmp_path / "metrics" / "serve.json", result)
    text = report.write_reports(
        measured["targets"],
        tmp_path / "metrics",
        measured["builds"],
        tmp_path / "r",
        tmp_path / "p",
    )
    assert "### Recognition server (high bundle)" in text
    assert "| bundle | off | 1 |" in text
    (tmp_path / "metrics" / "serve.json").unlink()
    text = report.write_reports(
        measured["targets"],
        tmp_path / "metrics",
        measured["builds"],
        tmp_path / "r",
        tmp_path / "p",
    )
    assert "Recognition server" not in text


NOTES = [
    "overrides.mid ignored: mid is not in targets [high, low]",
    "bench.baselines stock_default skipped: ddddocr's own int8 model applies only to "
    "model.source ddddocr",
]


def test_the_notes_of_params_get_a_section_only_when_there_are_some(
    written: dict, tmp_path: Path
) -> None:
    assert "### Notes" not in written["text"]
    assert "### Notes" not in page(written, "summary.md")
    args = (written["targets"], written["metrics"], written["builds"], tmp_path / "r")
    text = report.write_reports(*args, tmp_path / "p", NOTES)
    section = "### Notes (params.yaml)\n\n" + "\n".join(f"- {n}" for n in NOTES) + "\n\n"
    assert section in text
    assert section in (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    assert "<h3>Notes (params.yaml)</h3>" in (tmp_path / "r" / "index.html").read_text()


def test_the_report_verb_passes_and_prints_the_notes_of_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """targets narrowed to [high, low] with mid's override left in place: noted, not refused."""
    from stages import cli

    params = {
        "targets": ["high", "low"],
        "model": {"source": "file", "path": "models/input/m.onnx"},
        "data": {"synthetic": {"clean": {"seed": 1}}},
        "bench": {"baselines": ["stock", "stock_default"]},
        "versions": {},
        "overrides": {"high": {}, "mid": {}, "low": {}},
    }
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))  # JSON is YAML
    got: list[list[str]] = []
    goals: list[float] = []
    monkeypatch.setattr(
        report,
        "write_reports",
        lambda *a, agreement_goal: got.append(list(a[-1])) or goals.append(agreement_goal) or "",
    )
    argv = ["report", "--params", str(path), "--metrics", "m", "--builds", "b", "--plots", "p"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert got == [NOTES] and goals == [0.97]  # params.levers.agreement_goal's default
    assert capsys.readouterr().err == "".join(f"note: {path}: {n}\n" for n in NOTES)


def test_stage_rows_say_when_an_exact_stage_took_its_inputs_texts():
    from stages.records import VariantEval
    from stages.report.class_page import _checked

    took = VariantEval(sets={}, texts_of="02-lift_constants", checked_images=100)
    assert _checked(True, took) == "exact; 100 per set read as 02-lift_constants: its texts"
    assert _checked(True, VariantEval(sets={})) == "exact"
    assert _checked(False, None) == "lossy"


def test_a_ratio_budget_inside_its_rounds_spread_is_reported_on_the_edge(measured: dict) -> None:
    """The median decides a ratio budget; when some round fell on the other side of its limit,
    the class page and the summary say so (low's speed budget on the 2026-12-06 EPYC: 3.009
    against 3.0, rounds 2.986-3.042), and say nothing when every round is on one side."""
    from stages.records import Budget
    from stages.report.class_page import budgets_section
    from stages.report.format import on_the_edge
    from stages.report.summary import _budget_cell

    bench = read_record(measured["metrics"] / "low.json", BenchRecord)

    def with_speed(limit: float, spread: list[float], median: float) -> BenchRecord:
        budgets = dict(bench.budgets)
        budgets["min_warm_speedup"] = Budget(limit=limit, value=median, ok=median >= limit)
        spreads = {**bench.bundle_ratios_spread, "warm_speedup": spread}
        return bench.model_copy(update={"budgets": budgets, "bundle_ratios_spread": spreads})

    edge = with_speed(3.0, [2.986, 3.042], 3.009)
    assert on_the_edge(edge) == {"min_warm_speedup": [2.986, 3.042]}
    assert "✅ (on the edge: its rounds span 2.99–3.04)" in budgets_section(edge)
    assert "min_warm_speedup on the edge: its rounds span 2.99–3.04" in _budget_cell(edge)
    missed = with_speed(3.0, [2.9, 3.05], 2.99)
    assert "❌ under (on the edge: its rounds span 2.90–3.05)" in budgets_section(missed)
    cell = _budget_cell(missed)  # the tiny class misses its RSS budget too
    assert "missed: " in cell and "min_warm_speedup; min_warm_speedup on the edge" in cell
    clear = with_speed(3.0, [3.05, 3.2], 3.1)
    assert "min_warm_speedup" not in on_the_edge(clear)
    assert "on the edge" not in budgets_section(clear) + _budget_cell(clear)
