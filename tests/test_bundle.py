"""The bundle stage on tiny models: what ships and what is optional, the fallback choices,
formats, hashes, determinism and atomicity. Bundles come from the real writers (builders)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import builders
import onnx
import pytest
import tiny
from onnx import TensorProto
from onnxruntime.quantization import quantize_dynamic

from ocr_bundles_runtime import Recognizer
from ocr_bundles_runtime.manifest import parse_bundle, sizes_mb
from stages import bundle, modelio
from stages.build import read_build_contract
from stages.errors import ModelError

PASSES = [{"fix_output_shape": {}}, {"prune_charset": {"chars": "abcde"}}, {"quantize_dynamic": {}}]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def low(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("low")
    return builders.tiny_bundle(
        root,
        passes=PASSES,
        target="low",
        bundle={"formats": ["ort", "onnx"], "fallback": "float", "confidence_threshold": 0.4},
    )


def test_manifest_lists_every_file_with_its_hash(low: Path):
    doc = manifest(low)
    names = sorted(p.name for p in low.iterdir() if p.name != "manifest.json")
    assert sorted(doc["files"]) == names
    for name, entry in doc["files"].items():
        data = (low / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert doc["format_version"] == 4 and doc["target"] == "low"
    assert doc["formats"] == ["ort", "onnx"]
    assert doc["output"] | {} == {
        "name": "logits",
        "classes": 6,
        "layout": "TBC",
        "blank": 0,
        "kind": "logits",
    }
    assert doc["input"]["shape"] == [1, "channels", "height", "width"]  # numbers: preprocess
    assert doc["input"]["batch"] is False and doc["preprocess"]["channels"] == 1
    assert doc["preprocess"]["height"] == tiny.HEIGHT
    assert doc["scoring"] == {"strip": True, "casefold": False}
    assert doc["confidence_threshold"] == 0.4
    assert doc["escalation"] == {"url": None, "timeout_s": 2.0}
    spec = parse_bundle(low)  # the runtime reads what the stage wrote
    assert spec.charset == ["", "a", "b", "c", "d", "e"]


def test_the_manifest_carries_the_builds_contract_as_is(low: Path):
    """The walk from the contract to recognition: recipe.json's contract (the model stage's,
    for the built model) -> manifest.json -> the runtime's record, with no re-derivation."""
    build = low.parent.parent / "build" / "low" / "model"
    contract = read_build_contract(build)
    doc = manifest(low)
    assert doc["output"] == contract.dump()["output"]
    assert doc["scoring"] == contract.dump()["scoring"]
    assert doc["input"]["batch"] is contract.batch
    spec = parse_bundle(low)
    assert spec.manifest.output == contract.output  # the same record type, field for field
    assert (spec.layout, spec.blank, spec.kind) == (
        contract.output.layout,
        contract.output.blank,
        contract.output.kind,
    )
    assert len(spec.charset) == contract.output.classes


def test_ships_and_optional_are_separate(low: Path):
    doc = manifest(low)
    vectors = ["conformance.json"] + [f"conformance-{i:02d}.png" for i in range(8)]
    assert doc["ships"] == sorted(
        ["charset.json", "manifest.json", "model.onnx", "model.ort", *vectors]
    )
    assert doc["optional"] == ["fallback.onnx", "fallback.ort", "required_operators.config"]
    sizes = sizes_mb(low, doc)
    ships = sum((low / n).stat().st_size for n in doc["ships"]) / 1e6
    assert sizes["ships_mb"] == round(ships, 3)
    assert sizes["optional_mb"] > 0


def test_float_fallback_is_the_latest_float_stage_bytes(low: Path):
    fb = manifest(low)["models"]["fallback"]
    assert fb == {
        "files": {"ort": "fallback.ort", "onnx": "fallback.onnx"},
        "optional": True,
        "origin": "stages/02-prune_charset.onnx",
        "float": True,
        "pruned_here": False,
    }
    stage = low.parent.parent / "build" / "low" / "model" / fb["origin"]
    assert (low / "fallback.onnx").read_bytes() == stage.read_bytes()


def test_metrics_summary_per_set_from_eval(low: Path):
    metrics = manifest(low)["metrics"]
    assert metrics["sets"] == {"clean": 10, "hard": 10}
    assert set(metrics["final"]) == {"clean", "hard"}
    assert set(metrics["final"]["clean"]) == {"accuracy", "cer"}
    assert set(metrics["fallback"]) == {"clean", "hard"}  # a stage's own figures


def test_both_formats_load_and_agree(low: Path):
    image = next((low.parent.parent / "data" / "clean" / "eval").glob("*.png"))
    texts = {
        fmt: Recognizer.from_bundle(low, model_format=fmt).predict(image).text
        for fmt in ("ort", "onnx")
    }
    assert texts["ort"] == texts["onnx"]


def test_one_format_ships_one_file_per_model(tmp_path: Path):
    only_ort = builders.tiny_bundle(tmp_path, passes=PASSES, bundle={"formats": ["ort"]})
    names = sorted(p.name for p in only_ort.iterdir() if not p.name.startswith("conformance"))
    assert names == ["charset.json", "manifest.json", "model.ort", "required_operators.config"]
    assert manifest(only_ort)["models"] == {
        "primary": {"files": {"ort": "model.ort"}, "optional": False}
    }


def test_no_fallback_ships_no_fallback(tmp_path: Path):
    folder = builders.tiny_bundle(tmp_path, passes=PASSES, bundle={"fallback": "none"})
    assert "fallback" not in manifest(folder)["models"]
    assert not list(folder.glob("fallback.*"))
    assert manifest(folder)["optional"] == []


def test_stage_fallback_by_pass_name_or_stem(tmp_path: Path):
    folder = builders.tiny_bundle(
        tmp_path, passes=PASSES, bundle={"formats": ["onnx"], "fallback": "stage:fix_output_shape"}
    )
    fb = manifest(folder)["models"]["fallback"]
    assert fb["origin"] == "stages/01-fix_output_shape.onnx"
    assert fb["pruned_here"] is True  # the stage still had every class: pruned to the final's
    assert (
        modelio.spec(modelio.load(folder / "fallback.onnx")).charset == parse_bundle(folder).charset
    )


def test_unknown_stage_fallback_lists_the_stages(tmp_path: Path):
    with pytest.raises(ModelError, match="stages: \\['01-fix_output_shape'"):
        builders.tiny_bundle(tmp_path, bundle={"fallback": "stage:nope"})


def test_class_fallback_uses_another_class_final_model(tmp_path: Path):
    builders.tiny_bundle(tmp_path, passes=PASSES[:2], target="mid")
    builders.build_class(tmp_path, "low", PASSES)
    builders.evaluate_class(tmp_path, "low")
    build = builders.read_recipe(tmp_path / "build" / "low" / "model")
    assert build.bundle.fallback == "none"
    low = _bundle_with(tmp_path, "low", fallback="class:mid")
    fb = manifest(low)["models"]["fallback"]
    assert fb["origin"] == "class:mid" and fb["float"] is True
    mid_final = tmp_path / "build" / "mid" / "model" / "model.onnx"
    assert (low / "fallback.onnx").read_bytes() == mid_final.read_bytes()


def test_class_fallback_errors_name_the_class(tmp_path: Path):
    builders.tiny_bundle(tmp_path, passes=PASSES, target="low")
    with pytest.raises(ModelError, match="class 'ghost' has no built model"):
        _bundle_with(tmp_path, "low", fallback="class:ghost")
    builders.build_class(tmp_path, "wide", [{"fix_output_shape": {}}])  # every class kept
    with pytest.raises(ModelError, match="different charset"):
        _bundle_with(tmp_path, "low", fallback="class:wide")


def _bundle_with(root: Path, target: str, **bundle_fields) -> Path:
    """Rewrite the saved recipe's bundle options, then bundle (the build is unchanged)."""
    path = root / "build" / target / "model" / "recipe.json"
    data = json.loads(path.read_text())
    data["recipe"]["bundle"] |= bundle_fields
    path.write_text(json.dumps(data))
    return builders.bundle_class(root, target)


def test_ort_conversion_is_byte_identical_on_rebuild(low: Path, tmp_path: Path):
    """The converter orders tables by address; it runs without ASLR so bytes repeat."""
    again = tmp_path / "again"
    again.mkdir()
    for name in ("model.onnx", "fallback.onnx"):
        (again / name).write_bytes((low / name).read_bytes())
    bundle.convert_to_ort(again, ["model", "fallback"])
    for name in ("model.ort", "fallback.ort", "required_operators.config"):
        assert (again / name).read_bytes() == (low / name).read_bytes(), name
    assert str(again) not in (again / "required_operators.config").read_text()


# ---------------------------------------------------------------------------- choose_fallback


def _quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "a.onnx"), os.path.join(d, "b.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst)
        spec = modelio.spec(model)
        return modelio.with_spec(onnx.load(dst), spec.charset, spec.layout, spec.blank)


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer[0].data_type = TensorProto.FLOAT16
    return out


def _pruned(model: onnx.ModelProto, chars: str) -> onnx.ModelProto:
    from stages.passes.prune_charset import PruneCharsetOptions, prune_charset
    from stages.registry import PassContext

    return prune_charset(model, PruneCharsetOptions(chars=chars), PassContext())


def test_choose_fallback_skips_quantized_and_half_models():
    f = tiny.tiny_ctc(wrong_output_shape=False)
    final = modelio.spec(f)
    cands = [("q", None, _quantized(f)), ("h", None, _half(f)), ("float", Path("x"), f)]
    choice = bundle.choose_fallback(final, cands)
    assert (choice.origin, choice.is_float, choice.derived) == ("float", True, False)


def test_choose_fallback_prunes_when_no_float_stage_has_the_final_charset():
    f = tiny.tiny_ctc(wrong_output_shape=False)
    final = modelio.spec(_pruned(f, "abc"))
    choice = bundle.choose_fallback(
        final, [("q", None, _quantized(_pruned(f, "abc"))), ("f", None, f)]
    )
    assert choice.origin == "f" and choice.derived and choice.is_float
    assert modelio.spec(choice.model).charset == final.charset


def test_choose_fallback_uses_an_int8_source_when_nothing_is_float():
    f = tiny.tiny_ctc(wrong_output_shape=False)
    q = _quantized(f)
    choice = bundle.choose_fallback(modelio.spec(q), [("source", None, q)])
    assert (choice.origin, choice.is_float) == ("source", False)


# ---------------------------------------------------------------------------- failures


def test_input_contract_must_match_the_model(tmp_path: Path):
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    builders.build_class(tmp_path, "t", [{"fix_output_shape": {}}])
    builders.evaluate_class(tmp_path, "t")
    path = tmp_path / "build" / "t" / "model" / "recipe.json"
    data = json.loads(path.read_text())
    data["recipe"]["preprocess"]["channels"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="feeds \\[1, 3, 8, width\\]"):
        builders.bundle_class(tmp_path, "t")


def test_failed_write_keeps_the_old_bundle(low: Path, tmp_path: Path, monkeypatch):
    root = low.parent.parent
    before = {p.name: p.read_bytes() for p in low.iterdir()}

    def broken(*args, **kwargs):
        raise ModelError("self-check exploded")

    monkeypatch.setattr(bundle, "self_check", broken)
    with pytest.raises(ModelError, match="exploded"):
        builders.bundle_class(root, "low")
    assert {p.name: p.read_bytes() for p in low.iterdir()} == before
    assert sorted(p.name for p in low.parent.iterdir()) == ["low"]  # no temp folder left


def test_ort_conversion_is_byte_identical_from_another_checkout(low: Path, tmp_path: Path):
    """A virtual environment elsewhere (a clone in another folder) converts to the same bytes:
    its paths' lengths once moved the writer's address-ordered tables."""
    site = next(p for p in sys.path if Path(p).name == "site-packages")
    venv = tmp_path / "a-checkout-in-a-folder-with-a-much-longer-name" / ".venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    other = next(venv.glob("lib/python*/site-packages"))
    for entry in Path(site).iterdir():  # the same packages, reached through this venv's paths
        if not (other / entry.name).exists():
            (other / entry.name).symlink_to(entry)
    again = tmp_path / "again"
    again.mkdir()
    for name in ("model.onnx", "fallback.onnx"):
        (again / name).write_bytes((low / name).read_bytes())
    code = "import sys; from pathlib import Path; from stages.bundle import convert_to_ort; "
    code += "convert_to_ort(Path(sys.argv[1]), ['model', 'fallback'])"
    subprocess.run([str(venv / "bin" / "python"), "-c", code, str(again)], check=True,
                   cwd=Path(__file__).parents[1])  # fmt: skip
    for name in ("model.ort", "fallback.ort"):
        assert (again / name).read_bytes() == (low / name).read_bytes(), name
