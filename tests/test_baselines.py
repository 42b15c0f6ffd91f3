"""Which baselines the baselines and bench stages run: Params.applicable_baselines decides, the
verbs pass its list on and note what was skipped; a skipped one is never measured under its
name by the lower-level functions either."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

# imported before _no_inputs' patches: a module first imported under them would keep the stubs
# for the whole session (`from ..evaluate import EvalSets` binds the name at import)
import stages.measure.bench  # noqa: F401
from stages import cli
from stages.baselines import stock_kind

FILE_SOURCE = {
    "targets": ["low"],
    "model": {"source": "file", "path": "models/input/m.onnx"},
    "data": {"synthetic": {"clean": {"seed": 1}}},
    "bench": {"baselines": ["stock", "stock_default", "naive_int8"]},
    "versions": {},
    "overrides": {"low": {}},
}
NOTE = (
    "bench.baselines stock_default skipped: ddddocr's own int8 model applies only to "
    "model.source ddddocr"
)


def _project(tmp_path: Path, params: dict[str, Any]) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "source.json").write_text(json.dumps({"file": "m.onnx"}))
    return tmp_path


def _no_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verbs' readers of earlier stages' outputs, stubbed: only the choice is tested."""
    monkeypatch.setattr("stages.contract.read_contract", lambda _dir: None)
    monkeypatch.setattr("stages.data.dataset.read_sets", lambda *_a: {})
    monkeypatch.setattr("stages.evaluate.EvalSets", lambda _sets: None)


def test_the_baselines_stage_builds_only_the_applicable_ones_and_notes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _project(tmp_path, FILE_SOURCE)
    _no_inputs(monkeypatch)
    got: list[list[str]] = []

    def build(*args: Any) -> SimpleNamespace:
        got.append(list(args[-1]))
        return SimpleNamespace(variants={})

    monkeypatch.setattr("stages.baselines.build_baselines", build)
    argv = ["baselines", "--params", str(root / "params.yaml"), "--model", str(root / "source")]
    rc = cli.main([*argv, "--data", str(root / "data"), "--out", str(root / "baselines")])
    assert rc == 0
    assert got == [["stock", "naive_int8"]]
    err = capsys.readouterr().err
    assert err == f"note: {root / 'params.yaml'}: {NOTE}\n"


def test_the_bench_stage_measures_only_the_applicable_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, FILE_SOURCE)
    _no_inputs(monkeypatch)
    got: list[Any] = []

    def bench(_inputs: Any, _recipe: Any, _contract: Any, params: Any) -> SimpleNamespace:
        got.append(params)
        return SimpleNamespace(ratios=None)

    monkeypatch.setattr("stages.measure.bench.run_bench", bench)
    monkeypatch.setattr("stages.build.read_recipe", lambda _dir: None)
    monkeypatch.setattr("stages.records.write_record", lambda *_a: None)
    argv = ["bench", "--params", str(root / "params.yaml"), "--target", "low"]
    argv += ["--model", str(root / "source"), "--data", "d", "--build", "b", "--eval", "e"]
    argv += ["--bundle", "u", "--baselines", "s", "--verify", "v", "--clients", "c", "--out", "o"]
    assert cli.main(argv) == 0
    assert [p.baselines for p in got] == [["stock", "naive_int8"]]


def test_a_ddddocr_source_runs_every_listed_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    params = {**FILE_SOURCE, "model": {"source": "ddddocr"}}
    root = _project(tmp_path, params)
    _no_inputs(monkeypatch)
    got: list[list[str]] = []
    monkeypatch.setattr(
        "stages.baselines.build_baselines",
        lambda *a: got.append(list(a[-1])) or SimpleNamespace(variants={}),
    )
    argv = ["baselines", "--params", str(root / "params.yaml"), "--model", str(root / "source")]
    assert cli.main([*argv, "--data", "d", "--out", str(root / "out")]) == 0
    assert got == [["stock", "stock_default", "naive_int8"]]
    assert capsys.readouterr().err == ""


def test_stock_on_a_file_source_is_the_source_model_and_stock_default_is_refused() -> None:
    file_origin = {"file": "m.onnx", "sha256": "0"}
    assert stock_kind("stock", file_origin) is None  # the source model, plain onnxruntime
    with pytest.raises(ValueError, match="stock_default needs the ddddocr source"):
        stock_kind("stock_default", file_origin)
    dddd = {"package": "ddddocr", "file": "common.onnx"}
    assert stock_kind("stock", dddd) == "beta" and stock_kind("stock_default", dddd) == "old"
