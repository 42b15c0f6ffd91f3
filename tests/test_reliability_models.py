"""Bad models: refused with ModelError/PassError (exit 2 from the `model` verb, one line naming
the file or the params.yaml field to change), never a crash, and nothing written.

User models and dictionaries live under models/input/ (relative to the working directory), so
every test here runs inside its own temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tiny
from builders import build_class, write_data, write_source
from onnx import helper

from stages import cli, modelio
from stages.contract import ModelParams
from stages.errors import ModelError, PassError
from stages.passes.quantize_dynamic import QuantizeDynamicOptions, quantize_dynamic
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static
from stages.registry import PassContext
from stages.source import load_source

CHARSET = ["", *"abcdef"]  # tiny_ctc's 7 classes
INPUT = Path("models/input")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder holding models/input/, as the model stage does in a checkout."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / INPUT).mkdir(parents=True)
    return tmp_path


def float_model() -> onnx.ModelProto:
    return tiny.tiny_ctc(wrong_output_shape=False)


def two_d_output() -> onnx.ModelProto:
    """The tiny model without its final Reshape: logits [T, C], no batch axis."""
    model = float_model()
    kept = [n for n in model.graph.node if n.name != "out"]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("logits2d", onnx.TensorProto.FLOAT, ["T", 7])
    )
    return model


def with_softmax() -> onnx.ModelProto:
    """The tiny model ending in a Softmax over the classes: it outputs probabilities."""
    model = float_model()
    model.graph.output[0].name = "probs"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    return model


def external(folder: Path, name: str, location: str, **fields: str) -> Path:
    """`folder/name.onnx` whose initializers live in external data at `location`."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "ok.onnx").exists():
        onnx.save(
            float_model(),
            folder / "ok.onnx",
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    model = onnx.load(str(folder / "ok.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            entry.value = {"location": location, **fields}.get(entry.key, entry.value)
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _bytes(data: bytes) -> Callable[[Path], Path | None]:
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


def _model(model: onnx.ModelProto) -> Callable[[Path], Path | None]:
    return _bytes(model.SerializeToString())


def _charset_bytes(data: bytes, name: str = "charset.json") -> dict[str, Any]:
    (INPUT / name).write_bytes(data)
    return {"charset": {"source": "file", "path": str(INPUT / name)}}


FULL = float_model().SerializeToString()
MODEL, FIELD, CHARSET_FILE = "model", "field", "charset"  # what the message starts with
# name -> (writes the model file, charset, params `model:` changes (a dict, or a function
# returning one once the model is written), message part, what the message starts with: the
# model file, params.yaml's field (model.*) or the charset file)
BAD_MODELS: dict[str, tuple[Callable, list[str], Any, str, str]] = {
    "not_onnx": (_bytes(b"PK\x03\x04 a zip, not a model" * 20), CHARSET, {}, "ONNX model", MODEL),
    "text": (_bytes(b"hello\n"), CHARSET, {}, "ONNX model", MODEL),
    "empty": (_bytes(b""), CHARSET, {}, "not an ONNX model (empty or truncated graph)", MODEL),
    "truncated": (_bytes(FULL[: len(FULL) // 2]), CHARSET, {}, "ONNX model", MODEL),
    "two_d_output": (_model(two_d_output()), CHARSET, {}, "must output 3-D scores", MODEL),
    "charset_short": (_model(float_model()), CHARSET[:5], {}, "outputs 7 classes but", MODEL),
    "charset_long": (_model(float_model()), [*CHARSET, "x"], {}, "charset has 8 entries", MODEL),
    "wrong_height": (
        _model(float_model()),
        CHARSET,
        {"input": {"height": 64}},
        "check model.input.height, channels",
        MODEL,
    ),
    "wrong_channels": (
        _model(float_model()),
        CHARSET,
        {"input": {"channels": 3}},
        "check model.input.height, channels",
        MODEL,
    ),
    "wrong_layout": (
        _model(float_model()),
        CHARSET,
        {"output": {"layout": "BTC"}},
        "no batch axis of size 1 at position 0 for layout BTC; set model.output.layout: TBC",
        MODEL,
    ),
    "probabilities_as_logits": (
        _model(with_softmax()),
        CHARSET,
        {},
        "outputs probabilities (a final Softmax); set model.output.kind: probabilities",
        MODEL,
    ),
    "logits_as_probabilities": (
        _model(float_model()),
        CHARSET,
        {"output": {"kind": "probabilities"}},
        "rows do not sum to 1",
        MODEL,
    ),
    "blank_outside": (
        _model(float_model()),
        CHARSET,
        {"output": {"blank": 7}},
        "model.output.blank: 7 is outside the model's 7 classes",
        FIELD,
    ),
    "missing": (lambda path: None, CHARSET, {}, "does not exist (or is not a file)", FIELD),
    "outside_input_dir": (
        _model(float_model()),
        CHARSET,
        {"path": "elsewhere.onnx"},
        "model.path: elsewhere.onnx is outside models/input/",
        FIELD,
    ),
    "charset_file_missing": (
        _model(float_model()),
        CHARSET,
        {"charset": {"source": "file", "path": str(INPUT / "nope.json")}},
        "does not exist (or is not a file)",
        FIELD,
    ),
    "charset_not_utf8": (
        _model(float_model()),
        CHARSET,
        lambda: _charset_bytes(b"\xff\xfe\x00a\nb\n", "dict.txt"),
        "not UTF-8 text",
        FIELD,
    ),
    "charset_bad_json": (
        _model(float_model()),
        CHARSET,
        lambda: _charset_bytes(b"[1, 2"),
        "not valid JSON",
        CHARSET_FILE,
    ),
    "charset_not_strings": (
        _model(float_model()),
        CHARSET,
        lambda: _charset_bytes(b"[1, 2]"),
        "expected a JSON list of strings",
        CHARSET_FILE,
    ),
    "charset_empty": (
        _model(float_model()),
        CHARSET,
        lambda: _charset_bytes(b"", "dict.txt"),
        "the charset file lists no class",
        FIELD,
    ),
    "charset_from_ddddocr": (
        _model(float_model()),
        CHARSET,
        {"charset": {"source": "ddddocr"}},
        "model.charset.source is ddddocr but model.source is file",
        FIELD,
    ),
    "charset_metadata_key": (
        _model(float_model()),
        CHARSET,
        {"charset": {"source": "metadata", "metadata_key": "vocab"}},
        "the model has no metadata key 'vocab'; it has ['ocr.blank'",
        FIELD,
    ),
}


def model_params(case: str) -> ModelParams:
    """Write the case's model and charset under models/input/; its params.yaml `model:`."""
    write, charset, changes, _, _ = BAD_MODELS[case]
    path = INPUT / f"{case}.onnx"
    write(path)
    (INPUT / "charset.json").write_text(json.dumps(charset))
    fields: dict[str, Any] = {
        "source": "file",
        "path": str(path),
        "charset": {"source": "file", "path": str(INPUT / "charset.json")},
        "input": {"height": tiny.HEIGHT, "interpolation": "bilinear"},
    }
    changes = changes() if callable(changes) else changes
    for key, value in changes.items():
        fields[key] = {**fields.get(key, {}), **value} if isinstance(value, dict) else value
    return ModelParams.model_validate(fields)


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_load_source_refuses_bad_model(case: str):
    with pytest.raises(ModelError) as info:
        load_source(model_params(case))
    assert BAD_MODELS[case][3] in str(info.value)


def test_load_source_accepts_the_good_model():
    params = model_params("wrong_layout").model_copy(update={"output": ModelParams().output})
    model, contract, charset, origin = load_source(params)
    assert modelio.spec(model).charset == CHARSET == charset
    out = contract.output
    assert out.classes == 7 and out.layout == "TBC" and out.blank == 0
    assert origin == {"file": str(INPUT / "wrong_layout.onnx"), "sha256": origin["sha256"]}
    assert len(origin["sha256"]) == 64


def test_every_truncation_is_a_model_error():
    """Each strict prefix of a model (no trailing metadata to lose) is refused as a ModelError."""
    model = float_model()
    del model.metadata_props[:]
    full = model.SerializeToString()
    (INPUT / "charset.json").write_text(json.dumps(CHARSET))
    path = INPUT / "cut.onnx"
    params = ModelParams.model_validate(
        {
            "source": "file",
            "path": str(path),
            "charset": {"source": "file", "path": str(INPUT / "charset.json")},
            "input": {"height": tiny.HEIGHT},
        }
    )
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        with pytest.raises(ModelError):
            load_source(params)
    path.write_bytes(full)
    load_source(params)


def model_verb(capsys: pytest.CaptureFixture[str], model: ModelParams) -> tuple[int, str]:
    """`python -m stages model` on a params.yaml whose `model:` is `model`; nothing may be
    written when it fails."""
    params = {
        "targets": ["low"],
        "versions": {},
        "data": {"synthetic": {"clean": {"seed": 1}}},
        "bench": {"baselines": ["stock", "naive_int8"]},  # stock_default is ddddocr's only
        "overrides": {"low": {}},
        "model": model.model_dump(mode="json"),
    }
    Path("params.yaml").write_text(json.dumps(params))
    rc = cli.main(["model", "--params", "params.yaml", "--out", "models/source"])
    err = capsys.readouterr().err
    if rc != 0:
        assert not Path("models/source").exists()
        assert sorted(p.name for p in Path("models").iterdir()) == ["input"]
    return rc, err


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_model_verb_exits_2(capsys: pytest.CaptureFixture[str], case: str):
    params = model_params(case)
    rc, err = model_verb(capsys, params)
    assert rc == 2, err
    assert [ln.startswith("error:") for ln in err.splitlines()].count(True) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert BAD_MODELS[case][3] in err
    where = BAD_MODELS[case][4]
    if where == MODEL:
        assert err.startswith(f"error: {params.path}: "), err
    elif where == CHARSET_FILE:
        assert err.startswith(f"error: {params.charset.path}: "), err
    else:
        assert err.startswith("error: params.yaml: model.") or "(params.yaml: model." in err, err


def test_model_verb_writes_the_good_model(capsys: pytest.CaptureFixture[str]):
    """The control: the same params with nothing wrong write models/source whole."""
    params = model_params("wrong_layout").model_copy(update={"output": ModelParams().output})
    rc, err = model_verb(capsys, params)
    assert rc == 0, err
    names = sorted(p.name for p in Path("models/source").iterdir())
    assert names == ["charset.json", "contract.json", "model.onnx", "source.json"]


# ------------------------------------------------------------------ already quantized


@pytest.fixture(scope="module")
def common_old() -> onnx.ModelProto:
    return modelio.load(Path(str(resources.files("ddddocr") / "common_old.onnx")))


CONTEXT = PassContext(calibration=[np.ones((1, 1, 64, 64), np.float32)])
QUANTIZERS = {
    "dynamic": (quantize_dynamic, QuantizeDynamicOptions()),
    "static": (quantize_static, QuantizeStaticOptions()),
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_quantizers_refuse_common_old(common_old: onnx.ModelProto, name: str):
    fn, options = QUANTIZERS[name]
    with pytest.raises(PassError, match="already quantized") as info:
        fn(common_old, options, CONTEXT)
    assert "common.onnx, not common_old.onnx" in str(info.value)
    assert "MatMulInteger" in str(info.value)


@pytest.mark.parametrize("second", list(QUANTIZERS))
@pytest.mark.parametrize("first", list(QUANTIZERS))
def test_quantizers_refuse_quantized_output(first: str, second: str):
    tiny_context = PassContext(calibration=tiny.inputs(2))
    fn, options = QUANTIZERS[first]
    once = fn(float_model(), options, tiny_context)
    fn, options = QUANTIZERS[second]
    with pytest.raises(PassError, match="already quantized"):
        fn(once, options, tiny_context)


def test_build_of_a_quantized_source_fails_and_writes_nothing(tmp_path: Path):
    """Through the real build: the pass's PassError ends the build before anything is written."""
    tiny_context = PassContext(calibration=tiny.inputs(2))
    fn, options = QUANTIZERS["dynamic"]
    write_source(tmp_path, fn(float_model(), options, tiny_context))
    write_data(tmp_path, sizes={"calib": 2, "val": 2, "eval": 2})
    with pytest.raises(PassError, match="pass 'quantize_dynamic': the model is already quantized"):
        build_class(tmp_path, "low", [{"quantize_dynamic": {}}])
    assert not (tmp_path / "build").exists()


# ------------------------------------------------------------------ external data


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, where: str):
    folder = tmp_path / "model"
    external(folder, "seed", "weights.bin")
    outside = tmp_path / "outside.bin"
    shutil.copy(folder / "weights.bin", outside)
    location = {"parent": "../outside.bin", "absolute": str(outside), "symlink": "link.bin"}[where]
    if where == "symlink":
        os.symlink(outside, folder / "link.bin")
    path = external(folder, where, location)
    with pytest.raises(ModelError, match="points outside the model folder"):
        modelio.load(path)


def test_external_data_inside_the_folder_loads(tmp_path: Path):
    model = modelio.load(external(tmp_path, "inside", "weights.bin"))
    x = tiny.inputs(1)[0]
    np.testing.assert_array_equal(tiny.run(model, x), tiny.run(float_model(), x))


@pytest.mark.parametrize(
    "fields",
    [{"location": "absent.bin"}, {"offset": "99999999"}, {"length": "99999999"}],
    ids=["missing_file", "offset", "length"],
)
def test_broken_external_data_is_a_model_error(tmp_path: Path, fields: dict[str, str]):
    external(tmp_path, "seed", "weights.bin")
    path = external(tmp_path, "broken", fields.pop("location", "weights.bin"), **fields)
    with pytest.raises(ModelError):
        modelio.load(path)


def external_params(path: Path) -> ModelParams:
    (INPUT / "charset.json").write_text(json.dumps(CHARSET))
    return ModelParams.model_validate(
        {
            "source": "file",
            "path": str(path),
            "charset": {"source": "file", "path": str(INPUT / "charset.json")},
            "input": {"height": tiny.HEIGHT},
        }
    )


def test_model_verb_refuses_external_data_outside(capsys):
    external(INPUT / "m", "seed", "weights.bin")
    path = external(INPUT / "m", "up", "../weights.bin")
    shutil.copy(INPUT / "m" / "weights.bin", INPUT / "weights.bin")  # exists, but outside
    rc, err = model_verb(capsys, external_params(path))
    assert rc == 2 and err.startswith(f"error: {path}: "), err
    assert "points outside the model folder" in err


def test_model_verb_refuses_missing_external_data(capsys):
    external(INPUT / "m", "seed", "weights.bin")
    path = external(INPUT / "m", "absent", "absent.bin")
    rc, err = model_verb(capsys, external_params(path))
    assert rc == 2 and err.startswith(f"error: {path}: ") and "absent.bin" in err, err


def test_model_verb_loads_external_data_inside(capsys):
    path = external(INPUT / "m", "inside", "weights.bin")
    rc, err = model_verb(capsys, external_params(path))
    assert rc == 0, err
    assert modelio.spec(modelio.load(Path("models/source/model.onnx"))).charset == CHARSET
