"""Bad models: refused with ModelError/PassError (exit 2 from the `model` verb), never a crash."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from test_bundle import float_model, quantized

from stages import cli, modelio
from stages.errors import ModelError, PassError
from stages.passes.quantize_dynamic import QuantizeDynamicOptions, quantize_dynamic
from stages.passes.quantize_static import QuantizeStaticOptions, quantize_static
from stages.recipe import ModelSource
from stages.registry import PassContext
from stages.source import load_source

CHARSET = ["", *"abcdef"]  # tiny_ctc's 7 classes


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


# name -> (writes the model file and returns its path, charset, ModelSource changes, message)
def _bytes(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


def _model(model: onnx.ModelProto):
    return _bytes(model.SerializeToString())


FULL = float_model().SerializeToString()
BAD_MODELS = {
    "not_onnx": (_bytes(b"PK\x03\x04 a zip, not a model" * 20), CHARSET, {}, "ONNX model"),
    "text": (_bytes(b"hello\n"), CHARSET, {}, "ONNX model"),
    "empty": (_bytes(b""), CHARSET, {}, "not an ONNX model (empty or truncated graph)"),
    "truncated": (_bytes(FULL[: len(FULL) // 2]), CHARSET, {}, "not a readable ONNX model"),
    "two_d_output": (_model(two_d_output()), CHARSET, {}, "must output 3-D logits"),
    "charset_short": (_model(float_model()), CHARSET[:5], {}, "outputs 7 classes but the charset"),
    "charset_long": (_model(float_model()), [*CHARSET, "x"], {}, "charset has 8 entries"),
    "wrong_height": (_model(float_model()), CHARSET, {"height": 64}, "check model.height"),
    "wrong_channels": (_model(float_model()), CHARSET, {"channels": 3}, "check model.height"),
    "wrong_layout": (_model(float_model()), CHARSET, {"layout": "BTC"}, "no batch axis"),
    "blank_outside": (_model(float_model()), CHARSET, {"blank": 7}, "outside the charset"),
    "missing": (lambda path: path, CHARSET, {}, "no such model file"),
}


def source(tmp_path: Path, case: str) -> ModelSource:
    write, charset, changes, _ = BAD_MODELS[case]
    path = write(tmp_path / f"{case}.onnx")
    (tmp_path / "charset.json").write_text(json.dumps(charset))
    fields = {"path": str(path), "charset_file": str(tmp_path / "charset.json"), **changes}
    return ModelSource(source="file", **{"height": tiny.HEIGHT, **fields})


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_load_source_refuses_bad_model(tmp_path: Path, case: str):
    with pytest.raises(ModelError) as info:
        load_source(source(tmp_path, case))
    assert BAD_MODELS[case][3] in str(info.value)


def test_load_source_accepts_the_good_model(tmp_path: Path):
    model, origin = load_source(
        source(tmp_path, "wrong_layout").model_copy(update={"layout": "TBC"})
    )
    assert modelio.spec(model).charset == CHARSET and origin["sha256"]


def test_every_truncation_is_a_model_error(tmp_path: Path):
    """Each strict prefix of a model (no trailing metadata to lose) is refused as a ModelError."""
    model = float_model()
    del model.metadata_props[:]
    full = model.SerializeToString()
    (tmp_path / "charset.json").write_text(json.dumps(CHARSET))
    path = tmp_path / "cut.onnx"
    src = ModelSource(
        source="file", path=str(path), charset_file=str(tmp_path / "charset.json"), height=8
    )
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        with pytest.raises(ModelError):
            load_source(src)
    path.write_bytes(full)
    load_source(src)


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_model_verb_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str):
    src = source(tmp_path, case)
    params = {"targets": ["low"], "versions": {}, "model": src.model_dump()}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    rc = cli.main(
        ["model", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert [ln.startswith("error:") for ln in err.splitlines()].count(True) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert BAD_MODELS[case][3] in err
    if case != "blank_outside":
        assert err.startswith(f"error: {src.path}: ")
    assert not (tmp_path / "o").exists()


def test_model_verb_refuses_missing_charset_file(tmp_path: Path, capsys):
    model = {"source": "file", "path": "m.onnx", "charset_file": str(tmp_path / "nope.json")}
    (tmp_path / "params.yaml").write_text(
        json.dumps({"targets": ["low"], "versions": {}, "model": model})
    )
    rc = cli.main(
        ["model", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "charset file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ already quantized


@pytest.fixture(scope="module")
def common_old() -> onnx.ModelProto:
    return modelio.load(Path(str(resources.files("ddddocr") / "common_old.onnx")))


CONTEXT = PassContext(calibration=[np.ones((1, 1, 64, 64), np.float32)])
QUANTIZERS = [
    (quantize_dynamic, QuantizeDynamicOptions()),
    (quantize_static, QuantizeStaticOptions()),
]


@pytest.mark.parametrize(("fn", "options"), QUANTIZERS, ids=["dynamic", "static"])
def test_quantizers_refuse_common_old(common_old: onnx.ModelProto, fn, options):
    with pytest.raises(PassError, match="already quantized") as info:
        fn(common_old, options, CONTEXT)
    assert "common.onnx, not common_old.onnx" in str(info.value)
    assert "MatMulInteger" in str(info.value)


@pytest.mark.parametrize(("fn", "options"), QUANTIZERS, ids=["dynamic", "static"])
def test_quantizers_refuse_their_own_output(fn, options):
    tiny_context = PassContext(calibration=tiny.inputs(2))
    with pytest.raises(PassError, match="already quantized"):
        fn(quantized(float_model()), options, tiny_context)


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


def model_verb(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp_path / "charset.json").write_text(json.dumps(CHARSET))
    model = {"source": "file", "path": str(path), "charset_file": str(tmp_path / "charset.json")}
    params = {"targets": ["low"], "versions": {}, "model": {**model, "height": tiny.HEIGHT}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    rc = cli.main(
        ["model", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "o")]
    )
    assert not (tmp_path / "o").exists()
    return rc, capsys.readouterr().err


def test_model_verb_refuses_external_data_outside(tmp_path: Path, capsys):
    external(tmp_path / "m", "seed", "weights.bin")
    rc, err = model_verb(tmp_path, external(tmp_path / "m", "up", "../weights.bin"), capsys)
    assert rc == 2 and "points outside the model folder" in err


def test_model_verb_refuses_missing_external_data(tmp_path: Path, capsys):
    external(tmp_path / "m", "seed", "weights.bin")
    rc, err = model_verb(tmp_path, external(tmp_path / "m", "absent", "absent.bin"), capsys)
    assert rc == 2 and "absent.bin" in err
