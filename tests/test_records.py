"""The committed records read by the classes that write them: metrics/serve.json (ServeRecord)
and metrics/<C>.json's memory rows (MemorySetting) validate and write back byte for byte, and a
file of another shape is refused with a message naming the file, the record and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stages.measure.bench import memory_table
from stages.measure.serve_bench import serve_table, with_ratios
from stages.records import (
    BenchRecord,
    MemorySetting,
    RecordError,
    ServeRecord,
    ServeRun,
    VariantMetrics,
    read_record,
    write_record,
)

METRICS = Path(__file__).resolve().parents[1] / "metrics"


@pytest.mark.parametrize(
    ("name", "model"),
    [("serve", ServeRecord), ("high", BenchRecord), ("mid", BenchRecord), ("low", BenchRecord)],
)
def test_the_committed_metrics_validate_and_write_back_unchanged(
    name: str, model: type[ServeRecord | BenchRecord], tmp_path: Path
) -> None:
    committed = METRICS / f"{name}.json"
    record = read_record(committed, model)
    write_record(tmp_path / committed.name, record)
    assert (tmp_path / committed.name).read_bytes() == committed.read_bytes()


def test_the_committed_memory_rows_are_typed() -> None:
    low = read_record(METRICS / "low.json", BenchRecord)
    assert low.memory_settings and all(isinstance(r, MemorySetting) for r in low.memory_settings)
    assert low.memory_settings[0].setting == "recipe"
    assert low.memory_settings[0].peak_rss_delta_mb == 0.0


def _broken(tmp_path: Path, name: str, edit: Any) -> Path:
    data = json.loads((METRICS / f"{name}.json").read_text())
    edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_serve_run_with_a_renamed_field_names_it(tmp_path: Path) -> None:
    def rename(data: dict[str, Any]) -> None:
        data["runs"][1]["p50_ms"] = data["runs"][1]["latency_ms"].pop("p50")

    path = _broken(tmp_path, "serve", rename)
    with pytest.raises(RecordError) as info:
        read_record(path, ServeRecord)
    assert str(info.value).startswith(
        f"{path}: not a valid ServeRecord (runs[1].latency_ms.p50: Field required (+1 more))"
    )


def test_a_serve_run_of_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    path = _broken(tmp_path, "serve", lambda d: d["runs"][0].update(backend="tflite"))
    with pytest.raises(RecordError, match=r"runs\[0\]\.backend: Input should be 'bundle' or"):
        read_record(path, ServeRecord)


def test_a_memory_row_with_a_wrong_field_names_it(tmp_path: Path) -> None:
    path = _broken(tmp_path, "low", lambda d: d["memory_settings"][2].update(rss_mb=1.0))
    with pytest.raises(RecordError) as info:
        read_record(path, BenchRecord)
    assert str(info.value).startswith(
        f"{path}: not a valid BenchRecord (memory_settings[2].rss_mb: Extra inputs are not "
        "permitted)"
    )


def test_memory_table_rows_against_the_recipe_s_own() -> None:
    records = {
        "mem:recipe": VariantMetrics(kind="onnx", cold_start_ms=100.0, peak_rss_mb=50.0),
        "mem:enable_cpu_mem_arena=off": VariantMetrics(
            kind="onnx", cold_start_ms=90.5, peak_rss_mb=52.25, rss_growth_mb=1.0
        ),
        "mem:skipped": VariantMetrics(kind="onnx", skipped="no arena"),
        "final": VariantMetrics(kind="onnx", cold_start_ms=1.0),
    }
    base, flip = memory_table(records)
    assert (base.variant, base.setting, base.peak_rss_delta_mb) == ("mem:recipe", "recipe", 0.0)
    assert flip.setting == "enable_cpu_mem_arena=off"
    assert (flip.cold_start_delta_ms, flip.peak_rss_delta_mb) == (-9.5, 2.25)
    assert flip.warm_p50_delta_ms is None  # neither has a warm figure
    assert memory_table({"final": records["final"]}) == []


def test_serve_ratios_are_against_stock_at_the_same_clients() -> None:
    committed = read_record(METRICS / "serve.json", ServeRecord)
    bare = [r.model_copy(update={"throughput_vs_stock": None}) for r in committed.runs]
    assert with_ratios(bare) == committed.runs
    alone = [r for r in bare if r.backend == "bundle"]
    assert all(r.throughput_vs_stock is None for r in with_ratios(alone))
    table = serve_table(committed)
    rows = [line for line in table.splitlines() if line.startswith(("| bundle", "| stock"))]
    assert len(rows) == len(committed.runs)
    assert isinstance(committed.runs[0], ServeRun)
