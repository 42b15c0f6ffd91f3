"""The server bench (stages/measure/serve_bench.py) on a tiny batchable bundle with tiny numbers:
the result's shape and sanity, stock ddddocr driven through the same server with a handful of
requests, the markdown table, and metrics/serve.json read back by the class that wrote it."""

from __future__ import annotations

from pathlib import Path

import builders
import pytest
import tiny

from stages.measure.serve_bench import ServeBenchError, serve_bench, serve_table
from stages.records import ServeRecord, read_record, write_record


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("serve_bench")
    model = tiny.tiny_ctc(batch=True, wrong_output_shape=False)
    bundle = builders.tiny_bundle(root, model=model)
    images = sorted((root / "data" / "clean" / "eval").glob("*.png"))
    assert images
    return bundle, images


def test_serve_bench_shape_and_sanity(bench_inputs, tmp_path):
    bundle, images = bench_inputs
    result = serve_bench(
        bundle, images, clients=[1, 4], requests=40, batching=[True, False], stock_requests=6
    )
    assert result.machine["cpu"] and result.machine["usable_cores"] >= 1
    assert result.bundle.batch is True and result.bundle.target == "tiny"
    settings = result.settings
    assert settings.server_cores and settings.client_cores
    assert (settings.requests, settings.stock_requests) == (40, 6)
    runs = result.runs
    keys = {(r.backend, r.batching, r.clients) for r in runs}
    assert keys == {
        (backend, batching, n)
        for backend, batching in (("bundle", True), ("bundle", False), ("stock", False))
        for n in (1, 4)
    }
    assert [r.clients for r in runs] == [1, 1, 1, 4, 4, 4]  # interleaved
    for r in runs:
        expected = 6 if r.backend == "stock" else 40
        assert r.requests == r.ok == expected, r
        assert r.errors == {}
        assert r.throughput_rps is not None and r.throughput_rps > 0
        assert r.latency_ms.p50 is not None and r.latency_ms.p95 is not None
        assert 0 < r.latency_ms.p50 <= r.latency_ms.p95
        assert r.batches >= 1 and r.mean_batch_size is not None and r.mean_batch_size >= 1
        if r.backend == "bundle":
            assert r.throughput_vs_stock is not None and r.throughput_vs_stock > 0
        else:
            assert r.throughput_vs_stock == 1.0
    unbatched = [r for r in runs if not r.batching]
    assert all(r.mean_batch_size == 1.0 for r in unbatched)

    # metrics/serve.json: written and read by ServeRecord, the same record back
    write_record(tmp_path / "serve.json", result)
    assert read_record(tmp_path / "serve.json", ServeRecord) == result

    table = serve_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("| backend | batching | clients | recognitions/s")
    assert len([x for x in lines if x.startswith("| bundle") or x.startswith("| stock")]) == 6
    assert result.machine["cpu"] in table


def test_serve_bench_without_stock_on_a_model_that_does_not_batch(tmp_path):
    bundle = builders.tiny_bundle(tmp_path)  # the default tiny model has no batch dimension
    images = sorted((tmp_path / "data" / "hard" / "eval").glob("*.png"))
    result = serve_bench(bundle, images, clients=[2], requests=20, batching=[True], stock=False)
    (run,) = result.runs
    assert (run.backend, run.batching, run.clients) == ("bundle", False, 2)
    assert run.errors == {} and run.ok == 20
    assert run.throughput_vs_stock is None and result.settings.stock_requests is None
    assert "–" in serve_table(result)  # no stock: no ratio


def test_serve_bench_refuses_empty_inputs(bench_inputs):
    bundle, images = bench_inputs
    with pytest.raises(ServeBenchError, match="no images"):
        serve_bench(bundle, [], [1], 10, [True])
    with pytest.raises(ServeBenchError, match="positive"):
        serve_bench(bundle, images, [0], 10, [True])
