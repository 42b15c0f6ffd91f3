"""The bundle stage on tiny models: manifest, hashes, .ort files, the fallback rule, atomicity.

The helpers here (`make_bundle`, `png`, `set_manifest`) are shared by test_runtime.py and
test_recognize_cli.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from stages import bundle, modelio
from stages.build import StageResult, write_build
from stages.errors import ModelError, PipelineError
from stages.preprocess import Preprocess
from stages.recipe import BundleOptions, Recipe
from stages.runtime import BundleError, Recognizer, parse_bundle

PRE = Preprocess(height=tiny.HEIGHT, interpolation="bilinear")
DIV = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "argmax_agreement": 1.0}
EVAL = {
    "target": "tiny",
    "images": 10,
    "variants": {
        "reference": {"accuracy": 0.5, "cer": 0.2, "size_mb": 0.01, "model_p50_ms": 0.1},
        "01-sharpen": {"accuracy": 0.6, "cer": 0.1, "size_mb": 0.01, "model_p50_ms": 0.1},
        "final": {"accuracy": 0.4, "cer": 0.3, "size_mb": 0.005, "model_p50_ms": 0.05},
    },
}


def float_model() -> onnx.ModelProto:
    return tiny.tiny_ctc(wrong_output_shape=False)


def sharpened(model: onnx.ModelProto, factor: float = 4.0) -> onnx.ModelProto:
    """Same argmax, sharper softmax: a float model more confident than the quantized one."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in ("head_w", "head_b"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
    return out


def quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        modelio.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        out = onnx.load(str(dst))
    ctc = modelio.spec(model)
    return modelio.with_spec(out, ctc.charset, ctc.layout, ctc.blank)


def recipe(threshold: float = 0.5, ort_format: bool = True, pre: Preprocess = PRE) -> Recipe:
    return Recipe(
        description="tiny",
        passes=[],
        preprocess=pre,
        bundle=BundleOptions(confidence_threshold=threshold, ort_format=ort_format),
    )


def make_build(root: Path, stages: list[tuple[str, onnx.ModelProto]], rec: Recipe) -> Path:
    """models/source + build/tiny/model (+ eval.json) as the build stage writes them."""
    source = root / "models" / "source"
    modelio.save(float_model(), source / "model.onnx")
    modelio.write_json(source / "source.json", {"file": "tiny", "sha256": "ab" * 32})
    results = [StageResult(i, name, m, 0.0, DIV) for i, (name, m) in enumerate(stages, 1)]
    write_build(root / "build" / "tiny" / "model", rec, results, "tiny")
    modelio.write_json(root / "build" / "tiny" / "eval.json", EVAL)
    return root / "build" / "tiny"


def make_bundle(
    root: Path,
    stages: list[tuple[str, onnx.ModelProto]] | None = None,
    rec: Recipe | None = None,
) -> Path:
    """build/tiny/bundle from a sharpened float stage then a quantized final model (default)."""
    rec = rec or recipe()
    stages = stages or [
        ("sharpen", sharpened(float_model())),
        ("quantize", quantized(float_model())),
    ]
    cls = make_build(root, stages, rec)
    bundle.write_bundle(
        "tiny", cls / "model", root / "models" / "source", rec, cls / "eval.json", cls / "bundle"
    )
    return cls / "bundle"


def set_manifest(folder: Path, **changes: Any) -> None:
    """Edit manifest.json (not hash-covered: it holds the hashes)."""
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def png(seed: int = 0, size: tuple[int, int] = (40, 16)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b"))


def test_manifest_round_trip_and_hashes(built: Path):
    doc = json.loads((built / "manifest.json").read_text())
    assert (doc["format"], doc["format_version"], doc["target"]) == ("ocr-ctc-bundle", 1, "tiny")
    assert doc["input"] == {
        "name": "input1",
        "shape": [1, 1, tiny.HEIGHT, "width"],
        "dtype": "float32",
        "min_width": 16,
    }
    assert doc["preprocess"] == PRE.as_dict()
    assert doc["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert doc["ctc"] == {"layout": "TBC", "blank": 0}
    assert doc["confidence_threshold"] == 0.5
    assert doc["source"]["sha256"] == "ab" * 32
    assert doc["recipe_sha256"] == bundle.recipe_hash(recipe().resolved())
    on_disk = sorted(p.name for p in built.iterdir() if p.name != "manifest.json")
    assert sorted(doc["files"]) == on_disk
    for name, entry in doc["files"].items():
        assert entry == {
            "sha256": modelio.sha256(built / name),
            "bytes": (built / name).stat().st_size,
        }
    spec = parse_bundle(built)
    assert spec.preprocess == PRE and spec.charset == modelio.spec(float_model()).charset
    assert spec.runtime == recipe().runtime


def test_metrics_summary_from_eval(built: Path):
    metrics = json.loads((built / "manifest.json").read_text())["metrics"]
    assert metrics == {
        "images": 10,
        "final": {"accuracy": 0.4, "cer": 0.3, "size_mb": 0.005, "model_p50_ms": 0.05},
        "reference": {"accuracy": 0.5, "cer": 0.2},
        "fallback": {"accuracy": 0.6, "cer": 0.1},
    }


def test_fallback_is_latest_float_stage_bytes(built: Path):
    doc = json.loads((built / "manifest.json").read_text())
    fb = doc["models"]["fallback"]
    assert (fb["origin"], fb["float"], fb["pruned_here"]) == ("stages/01-sharpen.onnx", True, False)
    stage = built.parent / "model" / "stages" / "01-sharpen.onnx"
    assert modelio.sha256(built / "fallback.onnx") == modelio.sha256(stage)
    assert modelio.sha256(built / "model.onnx") == modelio.sha256(built.parent / "model/model.onnx")
    assert not bundle.is_float(onnx.load(str(built / "model.onnx")))


def test_ort_files_written_and_loadable(built: Path):
    config = (built / "required_operators.config").read_text()
    assert "LSTM" in config and "DynamicQuantizeLSTM" in config  # both models' operators
    assert str(built.parent) not in config  # no machine-specific paths
    x = tiny.inputs(1)[0]
    for name in ("model", "fallback"):
        sess = ort.InferenceSession(str(built / f"{name}.ort"), providers=["CPUExecutionProvider"])
        ref = tiny.run(onnx.load(str(built / f"{name}.onnx")), x)
        np.testing.assert_allclose(sess.run(None, {"input1": x})[0], ref, rtol=1e-4, atol=1e-4)
    a = Recognizer.from_bundle(built).predict(png())
    b = Recognizer.from_bundle(built, prefer_ort=True).predict(png())
    assert a.text == b.text and a.confidence == pytest.approx(b.confidence, abs=1e-3)


def test_no_ort_files_when_disabled(tmp_path: Path):
    out = make_bundle(tmp_path, rec=recipe(ort_format=False))
    assert not list(out.glob("*.ort")) and not (out / "required_operators.config").exists()
    assert json.loads((out / "manifest.json").read_text())["ort_format"] is None
    with pytest.raises(BundleError, match=r"no \.ort file"):
        Recognizer.from_bundle(out, prefer_ort=True)


def test_float_final_is_its_own_fallback(tmp_path: Path):
    out = make_bundle(tmp_path, stages=[("float", float_model())], rec=recipe(ort_format=False))
    assert modelio.sha256(out / "fallback.onnx") == modelio.sha256(out / "model.onnx")


def test_choose_fallback_skips_quantized_and_half_models():
    f, q = float_model(), quantized(float_model())
    half = float_model()
    half.graph.initializer[0].data_type = onnx.TensorProto.FLOAT16
    assert bundle.is_float(f) and not bundle.is_float(q) and not bundle.is_float(half)
    final = modelio.spec(q)
    choice = bundle.choose_fallback(
        final, [("stages/03-q", q), ("stages/02-h", half), ("source", f)]
    )
    assert (choice.origin, choice.is_float, choice.derived) == ("source", True, False)


def test_choose_fallback_prunes_when_no_float_stage_has_the_final_charset():
    from stages.passes.prune_charset import PruneCharsetOptions, prune_charset
    from stages.registry import PassContext

    full = float_model()
    # quantize after pruning, then drop the float pruned stage: only the full float is left
    pruned_q = quantized(prune_charset(full, PruneCharsetOptions(chars="bd"), PassContext()))
    final = modelio.spec(pruned_q)
    choice = bundle.choose_fallback(final, [("stages/02-q", pruned_q), ("stages/01-f", full)])
    assert (choice.origin, choice.is_float, choice.derived) == ("stages/01-f", True, True)
    assert modelio.spec(choice.model).charset == ["", "b", "d"] == final.charset
    assert bundle.is_float(choice.model)


def test_choose_fallback_uses_int8_source_when_nothing_is_float():
    q = quantized(float_model())
    choice = bundle.choose_fallback(modelio.spec(q), [("source", q)])
    assert (choice.origin, choice.is_float, choice.derived) == ("source", False, False)


def test_stale_build_recipe_is_refused(tmp_path: Path):
    cls = make_build(tmp_path, [("float", float_model())], recipe())
    with pytest.raises(PipelineError, match="different recipe"):
        bundle.write_bundle(
            "tiny", cls / "model", tmp_path / "models/source", recipe(0.9), None, cls / "bundle"
        )
    assert not (cls / "bundle").exists()


def test_preprocess_height_must_match_the_model(tmp_path: Path):
    rec = recipe(pre=Preprocess(height=16, interpolation="bilinear"), ort_format=False)
    cls = make_build(tmp_path, [("float", float_model())], rec)
    with pytest.raises(ModelError, match=r"preprocess\.height"):
        bundle.write_bundle("tiny", cls / "model", tmp_path / "models/source", rec, None, cls / "b")


def test_failed_write_keeps_the_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rec = recipe(ort_format=False)
    out = make_bundle(tmp_path, stages=[("float", float_model())], rec=rec)
    before = (out / "manifest.json").read_text()

    def broken(*_args: Any) -> None:
        raise ModelError("self-check failed")

    monkeypatch.setattr(bundle, "self_check", broken)
    with pytest.raises(ModelError, match="self-check"):
        bundle.write_bundle(
            "tiny", out.parent / "model", tmp_path / "models/source", rec, None, out
        )
    assert (out / "manifest.json").read_text() == before
    assert not (out.parent / ".bundle.tmp").exists()


def test_bundle_without_eval_has_no_metrics(tmp_path: Path):
    rec = recipe(ort_format=False)
    cls = make_build(tmp_path, [("float", float_model())], rec)
    doc = bundle.write_bundle(
        "tiny", cls / "model", tmp_path / "models/source", rec, None, cls / "bundle"
    )
    assert doc["metrics"] is None
    assert json.loads((cls / "bundle" / "manifest.json").read_text()) == doc


def test_failed_final_rename_keeps_the_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rec = recipe(ort_format=False)
    out = make_bundle(tmp_path, stages=[("float", float_model())], rec=rec)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name == ".bundle.tmp":
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        bundle.write_bundle(
            "tiny", out.parent / "model", tmp_path / "models/source", rec, None, out
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle", "eval.json", "model"]
