"""ocr_bundles_runtime.ddddocr: ddddocr's API over a bundle, checked on tiny bundles and, in the
integration test, against real ddddocr running the same (unmodified) common.onnx."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import builders
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import helper
from PIL import Image
from test_runtime import png

from ocr_bundles_runtime import ImageError, Recognizer
from ocr_bundles_runtime.ddddocr import DdddOcr, softmax, split_classes
from ocr_bundles_runtime.preprocess import Preprocess
from stages import modelio
from stages.contract import ModelParams
from stages.data import clean, hard
from stages.source import load_source, write_source

IMAGES = [png(i, (24 + 12 * i, 16)) for i in range(10)]  # the tiny model reads 5 texts
KEYS = {"text", "probabilities", "charset", "confidence"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builders.tiny_bundle(tmp_path_factory.mktemp("facade"), target="float")


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recognizer:
    return Recognizer.from_bundle(bundle)


@pytest.fixture
def ocr(bundle: Path) -> DdddOcr:
    """A fresh facade per test: set_ranges changes it."""
    return DdddOcr(bundle=bundle, show_ad=False)


def greedy(probabilities: list, charset: list[str]) -> str:
    """ddddocr's README recipe: the best class per step, then CTC's collapse and blank drop."""
    best = np.asarray(probabilities).reshape(-1, len(charset)).argmax(axis=-1)
    keep = [b for k, b in enumerate(best) if b != 0 and (k == 0 or b != best[k - 1])]
    return "".join(charset[b] for b in keep)


def texts(ocr: DdddOcr) -> list[str]:
    return [ocr.classification(img) for img in IMAGES]


# ---------------------------------------------------------------------------- text


def test_text_is_the_runtimes_predict_text(ocr: DdddOcr, rec: Recognizer):
    got = texts(ocr)
    assert got == [rec.predict(img).text for img in IMAGES]
    assert len(set(got)) > 3 and all(isinstance(t, str) for t in got)  # not a constant answer


def test_every_accepted_image_type_gives_the_same_answer(ocr: DdddOcr, tmp_path: Path):
    data = IMAGES[3]
    path = tmp_path / "captcha.png"
    path.write_bytes(data)
    pil = Image.open(io.BytesIO(data))
    inputs: list[Any] = [
        data,
        bytearray(data),
        str(path),
        path,
        base64.b64encode(data).decode(),
        pil,
        pil.convert("RGB"),
        pil.convert("RGBA"),
        np.asarray(pil),
    ]
    want, want_p = ocr.classification(data), ocr.classification(data, probability=True)
    for img in inputs:
        assert ocr.classification(img) == want, type(img)
        assert ocr.classification(img, probability=True) == want_p, type(img)
        assert ocr.classification(img, png_fix=True) == want, type(img)


@pytest.mark.parametrize("img", [b"", b"not an image", "no such file, nor base64!"])
def test_a_bad_image_raises_the_runtimes_image_error(ocr: DdddOcr, img: Any):
    with pytest.raises(ImageError):
        ocr.classification(img)
    with pytest.raises(ImageError):
        ocr.classification(img, probability=True)


def test_color_filters_are_refused_with_what_to_do(ocr: DdddOcr):
    with pytest.raises(ValueError, match=r"color_filter_colors.*filter the image first"):
        ocr.classification(IMAGES[0], color_filter_colors=["red"])


# ---------------------------------------------------------------------------- probability


def test_probability_has_ddddoccrs_structure(ocr: DdddOcr, rec: Recognizer):
    for img in IMAGES:
        got = ocr.classification(img, probability=True)
        assert isinstance(got, dict) and set(got) == KEYS
        text, out = rec.first_read(img)
        probs = np.asarray(got["probabilities"])
        assert probs.shape == out.shape  # the raw output's own [T][1][C] nesting
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
        assert got["charset"] == rec.spec.charset
        assert got["confidence"] == pytest.approx(float(probs.max(axis=-1).mean()), abs=1e-7)
        assert got["text"] == text == greedy(got["probabilities"], got["charset"])


def test_probabilities_are_the_softmax_of_the_raw_output(ocr: DdddOcr, rec: Recognizer):
    _, out = rec.first_read(IMAGES[0])
    x = out.astype(np.float64)
    want = np.exp(x - x.max(axis=-1, keepdims=True))
    want /= want.sum(axis=-1, keepdims=True)
    got = np.asarray(ocr.classification(IMAGES[0], probability=True)["probabilities"])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got, softmax(out))


def softmax_model() -> onnx.ModelProto:
    """The tiny recognizer ending in a Softmax, declared as output kind "probabilities"."""
    model = tiny.tiny_ctc(wrong_output_shape=False)
    name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [o + "_logits" if o == name else o for o in node.output]
    model.graph.node.append(helper.make_node("Softmax", [name + "_logits"], [name], axis=-1))
    return modelio.with_spec(model, modelio.spec(model).charset, "TBC", 0, "probabilities")


def test_a_probabilities_bundle_is_not_softmaxed_again(tmp_path: Path, bundle: Path):
    folder = builders.tiny_bundle(tmp_path, softmax_model(), target="softmax")
    ocr = DdddOcr(bundle=folder)
    assert ocr.recognizer.spec.kind == "probabilities"
    logits = DdddOcr(bundle=bundle)
    for img in IMAGES[:4]:
        _, out = ocr.recognizer.first_read(img)
        got = ocr.classification(img, probability=True)
        np.testing.assert_array_equal(np.asarray(got["probabilities"], np.float32), out)
        # the same as the logits bundle's softmax: softmax(probabilities) would flatten them
        want = logits.classification(img, probability=True)
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
        assert got["text"] == want["text"] == ocr.classification(img)


# ---------------------------------------------------------------------------- set_ranges


def test_set_ranges_drops_the_other_classes_from_text_and_probability_text(
    ocr: DdddOcr, rec: Recognizer
):
    full = texts(ocr)
    full_p = [ocr.classification(img, probability=True) for img in IMAGES]
    ocr.set_ranges("ab")
    assert texts(ocr) == ["".join(c for c in t if c in "ab") for t in full]
    assert any(t != "".join(c for c in t if c in "ab") for t in full)  # something was dropped
    for img, before in zip(IMAGES, full_p, strict=True):
        got = ocr.classification(img, probability=True)
        assert got["text"] == "".join(c for c in before["text"] if c in "ab")
        # as ddddocr 1.6.1: the probabilities still cover the whole charset
        assert got["probabilities"] == before["probabilities"]
        assert got["charset"] == rec.spec.charset
    ocr.set_ranges(["c", "d"])
    assert texts(ocr) == ["".join(c for c in t if c in "cd") for t in full]


def test_set_ranges_presets(ocr: DdddOcr):
    full = texts(ocr)
    ocr.set_ranges(1)  # a-z: the tiny charset is a-f, nothing is dropped
    assert texts(ocr) == full
    ocr.set_ranges(3)  # a-zA-Z
    assert texts(ocr) == full


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "none of these characters is in the bundle"),  # digits
        (7, ValueError, "none of these characters"),  # all but letters and digits: nothing
        (8, ValueError, "presets are 0 digits"),
        (-1, ValueError, "presets are"),
        ("", ValueError, "at least one character"),
        ([], ValueError, "at least one character"),
        (["a", 1], ValueError, "at least one character"),
        ("xyz", ValueError, "none of these characters"),
        (1.5, TypeError, "int preset, a str or a list"),
        (True, TypeError, "int preset"),
    ],
)
def test_set_ranges_refuses_what_keeps_nothing(ocr: DdddOcr, value: Any, error: type, message):
    with pytest.raises(error, match=message):
        ocr.set_ranges(value)


def test_split_classes_keeps_multi_character_classes_whole():
    charset = ["", "''", "a", "b"]
    assert split_classes("a''b'", charset) == ["a", "''", "b", "'"]
    assert split_classes("", charset) == []


# ---------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"det": True}, "det=True"),
        ({"ocr": False}, "ocr=False"),
        ({"import_onnx_path": "my.onnx"}, "import_onnx_path"),
        ({"charsets_path": "charsets.json"}, "charsets_path"),
        ({"device_id": 1}, "device_id=1"),
    ],
)
def test_arguments_a_bundle_cannot_honour_are_refused(bundle: Path, kwargs: dict, name: str):
    with pytest.raises(ValueError, match=name):
        DdddOcr(bundle=bundle, **kwargs)


def test_ddddoccrs_harmless_arguments_are_accepted_and_print_nothing(
    bundle: Path, rec: Recognizer, capsys: pytest.CaptureFixture[str]
):
    ocr = DdddOcr(bundle=bundle, old=True, beta=True, show_ad=True)
    assert capsys.readouterr().out == ""
    assert ocr.classification(IMAGES[1]) == rec.predict(IMAGES[1]).text
    assert ocr.get_charset() == rec.spec.charset


def test_exactly_one_of_bundle_files_archive(bundle: Path):
    files = {p.name: p.read_bytes() for p in bundle.iterdir()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    want = texts(DdddOcr(bundle=bundle))
    assert texts(DdddOcr(files=files)) == want
    assert texts(DdddOcr(archive=buf.getvalue())) == want
    assert texts(DdddOcr(str(bundle))) == want
    for kwargs in ({}, {"bundle": bundle, "files": files}, {"files": files, "archive": b"x"}):
        with pytest.raises(ValueError, match="exactly one of bundle="):
            DdddOcr(**kwargs)


def test_use_gpu_asks_cuda_first_and_runs_where_it_can(bundle: Path, rec: Recognizer):
    ocr = DdddOcr(bundle=bundle, use_gpu=True)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert ocr.recognizer.providers == ["CPUExecutionProvider"]
        assert any("provider_unavailable" in e for e in ocr.recognizer.events)
    assert ocr.get_model_info()["use_gpu"] is True
    ocr.switch_device(False)
    assert ocr.recognizer.providers == ["CPUExecutionProvider"]
    assert texts(ocr) == [rec.predict(img).text for img in IMAGES]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        ocr.switch_device(True, 2)


def test_methods_without_a_model_here_say_to_keep_ddddocr(ocr: DdddOcr):
    for call in (
        lambda: ocr.detection(IMAGES[0]),
        lambda: ocr.slide_match(IMAGES[0], IMAGES[1]),
        lambda: ocr.slide_comparison(IMAGES[0], IMAGES[1]),
    ):
        with pytest.raises(NotImplementedError, match=r"keep ddddocr\.DdddOcr"):
            call()


def test_model_info_has_ddddoccrs_keys(ocr: DdddOcr, rec: Recognizer):
    info = ocr.get_model_info()
    assert {"ocr_enabled", "det_enabled", "use_gpu", "device_id", "ocr_model"} <= set(info)
    assert info["ocr_model"]["classes"] == len(rec.spec.charset)


# ---------------------------------------------------------------------------- real ddddocr

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(scope="module")
def stock_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of ddddocr's own common.onnx (the model stage's default source), built by the
    real stages with the one exact pass (fix_output_shape changes only the declared output
    shape: every node and weight is the file's)."""
    root = tmp_path_factory.mktemp("stock")
    model, contract, charset, origin = load_source(ModelParams())
    write_source(root / "models" / "source", model, contract, charset, origin)
    builders.write_data(root, sizes={"calib": 2, "val": 4, "eval": 4})
    builders.build_class(
        root, "stock", [{"fix_output_shape": {}}], preprocess=Preprocess().as_dict()
    )
    builders.evaluate_class(root, "stock")
    return builders.bundle_class(root, "stock")


def translucent(data: bytes) -> bytes:
    """The captcha as an RGBA PNG whose light background is transparent."""
    rgb = Image.open(io.BytesIO(data)).convert("RGB")
    alpha = 255 - np.asarray(rgb.convert("L"))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([np.asarray(rgb), alpha]), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.integration
def test_facade_answers_as_real_ddddocr_on_the_same_model(stock_bundle: Path):
    ddddocr = pytest.importorskip("ddddocr")
    theirs = ddddocr.DdddOcr(beta=True, show_ad=False)
    ours = DdddOcr(bundle=stock_bundle, show_ad=False)
    images = [clean.sample(clean.CaptchaStyle(alphabet=ALPHABET), 11, i)[1] for i in range(24)]
    images += [hard.sample_hard(hard.HardStyle(alphabet=ALPHABET), 11, i)[1] for i in range(24)]
    for k, img in enumerate(images):
        assert ours.classification(img) == theirs.classification(img), k
        mine, stock = (o.classification(img, probability=True) for o in (ours, theirs))
        assert set(mine) == set(stock) == KEYS, k
        assert mine["text"] == stock["text"] and mine["charset"] == stock["charset"], k
        np.testing.assert_allclose(mine["probabilities"], stock["probabilities"], atol=1e-4)
        assert mine["confidence"] == pytest.approx(stock["confidence"], abs=1e-4), k
    # ddddocr's png_fix (alpha pasted on white) is what the runtime always does
    for img in images[:4]:
        assert ours.classification(translucent(img)) == theirs.classification(
            translucent(img), png_fix=True
        )
    # a custom range drops the same characters in both
    ours.set_ranges("abcdefghijklm0123")
    theirs.set_ranges("abcdefghijklm0123")
    for img in images[:8]:
        assert ours.classification(img) == theirs.classification(img)
        assert (
            ours.classification(img, probability=True)["text"]
            == theirs.classification(img, probability=True)["text"]
        )
