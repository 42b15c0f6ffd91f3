"""The report stage on hand-made metrics: tables, ratios as shown, budgets, sensitivity, plots,
and embedding the summary into a README between its markers."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from stages import modelio, report

TIMED = {"cold_start_ms": 300.0, "warm_p95_ms": 30.0, "peak_rss_mb": 200.0, "spread": {}}


def variant(kind: str, size: float, warm: float, acc: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "size_mb": size,
        **TIMED,
        "warm_p50_ms": warm,
        "model_p50_ms": warm - 1,
        "accuracy": acc,
        "cer": 0.01,
        "agreement": 1.0,
        **extra,
    }


def metrics(target: str = "low", sensitivity: bool = False) -> dict[str, Any]:
    return {
        "target": target,
        "description": "phones",
        "threads": 1,
        "affinity": [0],
        "worker_affinity": [[0]],
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "usable_cores": 2,
            "python": "3.11",
            "onnxruntime": "1.32.0",
            "ddddocr": "1.6.1",
        },
        "dataset": {
            "eval_images": 200,
            "image_size_median": [160, 60],
            "label_length": [4, 6],
            "timed_images": 100,
            "warmup": 10,
            "repeats": 5,
        },
        "variants": {
            "stock_beta": variant("stock", 50.0, 20.0, 0.92),
            "stock_default": variant("stock", 13.0, 10.0, 0.85),
            "naive_int8": variant("onnx", 13.5, 25.0, 0.91),
            "reference": variant("onnx", 50.0, 18.0, 0.92),
            "01-quantize": variant("onnx", 10.0, 5.0, 0.90),
            "final": variant("onnx", 10.0, 5.0, 0.90),
            "bundle": {"kind": "bundle", "size_mb": None, "skipped": "no bundle at x"},
        },
        "ratios": {},
        "vs_stock_default": {},
        "budgets": {
            "max_size_mb": {"limit": 12.0, "value": 10.0, "ok": True},
            "max_warm_p50_ms": {"limit": 4.0, "value": 5.0, "ok": False},
            "max_peak_rss_mb": {"limit": None, "value": 200.0, "ok": None},
            "max_accuracy_drop_pts": {"limit": None, "value": 2.0, "ok": None},
        },
        "compute_floor": {
            "rate_gmacs": {"fp32": 100.0, "int8": 400.0},
            "rate_op": "MatMul",
            "threads": 1,
            "final": {
                "input_width": 170,
                "mmacs": {"Conv": 300.0, "fp32": 320.0, "int8": 300.0, "total": 620.0},
                "floor_ms": 6.2,
                "floor_ms_at_threads": 6.2,
                "model_p50_ms": 4.0,
                "floor_fraction": 1.55,
            },
        },
    }


def build_json(sensitivity: bool) -> dict[str, Any]:
    stage = {
        "index": 1,
        "pass": "quantize",
        "file": "stages/01-quantize.onnx",
        "size_mb": 10.0,
        "seconds": 3.2,
        "max_abs_diff": 0.25,
        "max_rel_diff": 0.5,
        "argmax_agreement": 0.995,
    }
    if sensitivity:
        stage["sensitivity"] = {"conv_1": {"drop_pts": 0.5, "kept_float": True}}
    return {"target": "low", "stages": [stage]}


EVAL = {
    "variants": {
        "reference": {"by_length": {"4": {"n": 10, "accuracy": 0.9}, "5": {"n": 5, "accuracy": 1}}},
        "final": {"by_length": {"4": {"n": 10, "accuracy": 0.8}, "5": {"n": 5, "accuracy": 0.6}}},
    }
}


def write_inputs(root: Path, targets: dict[str, bool]) -> None:
    for target, sens in targets.items():
        modelio.write_json(root / "metrics" / f"{target}.json", metrics(target))
        modelio.write_json(root / "build" / target / "model" / "build.json", build_json(sens))
        modelio.write_json(root / "build" / target / "eval.json", EVAL)


def run(root: Path, targets: dict[str, bool]) -> str:
    write_inputs(root, targets)
    return report.write_reports(
        list(targets), root / "metrics", root / "build", root / "reports", root / "plots"
    )


def test_class_report_has_every_section_and_the_ratios(tmp_path: Path) -> None:
    run(tmp_path, {"low": True})
    page = (tmp_path / "reports" / "low.md").read_text()
    for heading in ("## Variants", "## Budgets", "## Compute floor", "## Stages", "## Sensitivity"):
        assert heading in page
    # final vs stock_beta: 10/50 size, 20/5 speed, 90 - 92 accuracy
    assert (
        "| **final** | 10.00 | 300 | 5.00 (30.00) | 4.00 | 200 | 90.0 | 0.20×, 4.00×, -2.0 pts |"
        in (page)
    )
    assert "| stock_beta | 50.00 |" in page and "1.00×, 1.00×, +0.0 pts" in page
    assert "bundle (skipped)" in page and "- bundle: no bundle at x" in page
    assert "| max_warm_p50_ms | 4.00 | 5.00 | ❌ over |" in page
    assert "| max_size_mb | 12.00 | 10.00 | ✅ |" in page
    assert "| 01-quantize | quantize | 10.00 | 3.2 | 0.25 | 0.9950 | 90.0 | 100.0 |" in page
    assert "| 4 | 10 | 90.0 | 80.0 |" in page
    assert "| conv_1 | 0.5 | True |" in page
    assert "620.0 M MACs (320.0 M fp32, 300.0 M int8) at input width 170" in page
    assert "100.0 G MAC/s fp32, 400.0 G MAC/s int8" in page
    assert "Test CPU" in page and "pinned to CPU(s) [0]" in page


def test_sensitivity_section_only_when_recorded(tmp_path: Path) -> None:
    run(tmp_path, {"low": False})
    assert "Sensitivity" not in (tmp_path / "reports" / "low.md").read_text()


def test_summary_has_one_row_per_class_and_the_baselines(tmp_path: Path) -> None:
    text = run(tmp_path, {"high": False, "low": False})
    assert text == (tmp_path / "reports" / "summary.md").read_text()
    assert not text.startswith("# ")  # embeddable: no page title
    assert "| [high](reports/high.md) | 1 | 10.00 |" in text
    assert "| [low](reports/low.md) |" in text and "1/2 ok" in text
    assert "| stock_default | low | 13.00 |" in text


def test_plot_csvs(tmp_path: Path) -> None:
    run(tmp_path, {"low": False})
    pareto = list(csv.DictReader(io.StringIO((tmp_path / "plots" / "pareto.csv").read_text())))
    assert {r["variant"] for r in pareto} == {
        "stock_beta",
        "stock_default",
        "naive_int8",
        "reference",
        "01-quantize",
        "final",
    }
    assert pareto[0] == {
        "target": "low",
        "variant": "stock_beta",
        "warm_p50_ms": "20.0",
        "accuracy": "0.92",
    }
    sizes = (tmp_path / "plots" / "sizes.csv").read_text().splitlines()
    assert sizes == [
        "target,step,size_mb",
        "low,low/reference,50.0",
        "low,low/01-quantize,10.0",
        "low,low/final,10.0",
    ]


def test_missing_metrics_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match=r"metrics/mid.json: missing"):
        report.write_reports(["mid"], tmp_path / "metrics", tmp_path, tmp_path, tmp_path)


def test_generic_table_shapes() -> None:
    assert report.generic_table([{"a": 1, "b": 0.123456}]) == "| a | b |\n|---|---|\n| 1 | 0.1235 |"
    assert report.generic_table({"k": 2}) == "| key | value |\n|---|---|\n| k | 2 |"
    assert report.generic_table(3).startswith("```json")


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


def test_ratios_table_shows_spread_and_runtime_floor():
    m = {
        "ratios": {
            "size": 0.097,
            "warm_speedup": 4.1,
            "cold_start": 0.59,
            "peak_rss": 0.43,
            "accuracy_drop_pts": -1.2,
        },
        "ratios_spread": {
            "warm_speedup": [3.9, 4.3],
            "cold_start": [0.55, 0.6],
            "peak_rss": [0.43, 0.43],
        },
        "variants": {
            "stock_beta": {"cold_start_ms": 200.0, "peak_rss_mb": 160.0},
            "runtime_floor": {"cold_start_ms": 100.0, "peak_rss_mb": 60.0},
        },
    }
    text = report.ratios_table({"low": m})
    row = text.splitlines()[-1]
    assert row == (
        "| low | 0.097× | 4.100× [3.900–4.300] | 0.590× [0.550–0.600] | 0.430× [0.430–0.430] "
        "| +1.2 pts | 0.50×, 0.38× |"
    )
