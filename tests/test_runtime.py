"""The runtime on tiny bundles: inputs, every fallback step, threads, imports."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bundle import (
    copy_bundle,
    float_model,
    make_bundle,
    png,
    quantized,
    recipe,
    set_manifest,
    sharpened,
)

from stages.bundle import is_float
from stages.preprocess import ImageError, Preprocess
from stages.runtime import BundleError, Recognizer, Result

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rt"))


def fresh(built: Path, tmp_path: Path, **manifest_changes: object) -> Path:
    out = copy_bundle(built, tmp_path / "bundle")
    if manifest_changes:
        set_manifest(out, **manifest_changes)
    return out


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def key(r: Result) -> tuple:
    return (r.text, r.confidence, r.status, r.model, r.char_probs, r.events)


def test_bytes_path_and_array_agree(built: Path, tmp_path: Path):
    rec = Recognizer.from_bundle(fresh(built, tmp_path, confidence_threshold=0.0))
    data = png(3)
    (tmp_path / "x.png").write_bytes(data)
    arr = np.asarray(Image.open(io.BytesIO(data)))
    results = [rec.predict(x, return_probs=True) for x in (data, tmp_path / "x.png", arr)]
    assert len({key(r) for r in results}) == 1
    r = results[0]
    assert (r.status, r.model, r.events, rec.model, rec.events) == (
        "ok",
        "primary",
        (),
        "primary",
        [],
    )
    assert set(r.timings_ms) == {"preprocess", "infer", "decode", "total"}
    assert r.timings_ms["total"] >= r.timings_ms["infer"] > 0
    assert r.char_probs is not None and len(r.char_probs) == len(r.text)
    assert rec.predict(data).char_probs is None
    assert json.loads(json.dumps(r.as_dict()))["text"] == r.text


def test_class_folder_is_accepted(built: Path):
    a = Recognizer.from_bundle(built.parent).predict(png())
    assert key(a) == key(Recognizer.from_bundle(built).predict(png()))


def test_missing_bundle_is_a_bundle_error(tmp_path: Path):
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        Recognizer.from_bundle(tmp_path)


def test_unavailable_provider_falls_through_to_the_next(built: Path, tmp_path: Path):
    rt = json.loads((built / "manifest.json").read_text())["runtime"]
    providers = ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    out = fresh(built, tmp_path, runtime={**rt, "providers": providers})
    rec = Recognizer.from_bundle(out)
    assert rec.providers == ["CPUExecutionProvider"]
    assert any(e.startswith("provider_unavailable: NoSuchExecutionProvider") for e in rec.events)
    assert rec.predict(png()).text == Recognizer.from_bundle(built).predict(png()).text
    override = Recognizer.from_bundle(built, providers=["OtherMissingProvider"])
    assert override.providers == ["CPUExecutionProvider"]
    assert "OtherMissingProvider" in override.events[0]


def test_tampered_primary_loads_the_fallback(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    tamper(out / "model.onnx")
    rec = Recognizer.from_bundle(out)
    assert rec.model == "fallback"
    assert any(e.startswith("primary_failed: model.onnx: SHA-256") for e in rec.events)
    r = rec.predict(png())
    assert r.model == "fallback"


def test_unloadable_primary_with_valid_hash_loads_the_fallback(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    (out / "model.onnx").write_bytes(b"not a model")
    files = json.loads((out / "manifest.json").read_text())["files"]
    files["model.onnx"] = {"sha256": hashlib.sha256(b"not a model").hexdigest(), "bytes": 11}
    set_manifest(out, files=files)
    rec = Recognizer.from_bundle(out)
    assert rec.model == "fallback"
    assert any(e.startswith("primary_failed: model.onnx: InvalidProtobuf") for e in rec.events)


def test_both_models_tampered_is_a_bundle_error(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    tamper(out / "model.onnx")
    (out / "fallback.onnx").unlink()
    with pytest.raises(BundleError, match="neither model") as e:
        Recognizer.from_bundle(out)
    assert "model.onnx" in str(e.value) and "fallback.onnx" in str(e.value)


def test_tampered_charset_or_manifest_is_a_bundle_error(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    (out / "charset.json").write_text('["", "x"]')
    with pytest.raises(BundleError, match=r"charset\.json: SHA-256"):
        Recognizer.from_bundle(out)
    set_manifest(out, format_version=99)
    with pytest.raises(BundleError, match="format"):
        Recognizer.from_bundle(out)


def test_charset_not_matching_the_models_is_refused(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    text = json.dumps(["", "z", "y", "x", "w", "v", "u"]).encode()
    (out / "charset.json").write_bytes(text)
    files = json.loads((out / "manifest.json").read_text())["files"]
    files["charset.json"] = {"sha256": hashlib.sha256(text).hexdigest(), "bytes": len(text)}
    set_manifest(out, files=files)
    with pytest.raises(BundleError, match=r"ocr\.charset metadata differs"):
        Recognizer.from_bundle(out)


def test_tampered_fallback_only_disables_the_rerun(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path, confidence_threshold=1.0)
    tamper(out / "fallback.onnx")
    rec = Recognizer.from_bundle(out)
    r = rec.predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert any(e.startswith("fallback_failed: fallback.onnx") for e in rec.events)
    assert "no_rerun: the fallback did not load" in r.events
    assert not rec.load_fallback()


@pytest.mark.parametrize(
    ("image", "code"),
    [(b"", "E_EMPTY"), (b"\x89PNG garbage", "E_DECODE"), (np.zeros((4, 4), np.float32), "E_INPUT")],
)
def test_bad_images_raise_typed_errors(built: Path, image: object, code: str):
    with pytest.raises(ImageError) as e:
        Recognizer.from_bundle(built).predict(image)
    assert e.value.code == code and e.value.retryable is False


def test_low_confidence_reruns_with_the_fallback(built: Path, tmp_path: Path):
    image = png(5)
    primary = Recognizer.from_bundle(fresh(built, tmp_path / "a", confidence_threshold=0.0))
    p = primary.predict(image).confidence
    only_fallback = fresh(built, tmp_path / "b", confidence_threshold=0.0)
    tamper(only_fallback / "model.onnx")
    f = Recognizer.from_bundle(only_fallback).predict(image).confidence
    assert f > p  # the sharpened float fallback is the more confident model

    rec = Recognizer.from_bundle(fresh(built, tmp_path / "c", confidence_threshold=(p + f) / 2))
    r = rec.predict(image)
    assert (r.status, r.model, r.confidence) == ("low_confidence_fallback", "fallback", f)
    assert [e.split(":")[0] for e in r.events] == ["low_confidence", "fallback_pass"]

    rec = Recognizer.from_bundle(fresh(built, tmp_path / "d", confidence_threshold=1.0))
    r = rec.predict(image)
    assert (r.status, r.model, r.confidence) == ("needs_server", "fallback", f)
    assert [e.split(":")[0] for e in r.events] == [
        "low_confidence",
        "fallback_pass",
        "needs_server",
    ]


def test_no_rerun_when_the_fallback_is_the_primary(tmp_path: Path):
    out = make_bundle(tmp_path, [("float", float_model())], recipe(1.0, ort_format=False))
    r = Recognizer.from_bundle(out).predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert "no_rerun: fallback and primary are the same bytes" in r.events


def test_predict_batch_matches_predict(built: Path):
    rec = Recognizer.from_bundle(built)
    images = [png(i) for i in range(5)]
    assert [key(r) for r in rec.predict_batch(images)] == [key(rec.predict(x)) for x in images]
    with pytest.raises(ImageError, match=r"images\[1\]"):
        rec.predict_batch([png(0), b"junk"])


def test_threads_give_sequential_results(built: Path, tmp_path: Path):
    # a threshold that sends some images to the lazily loaded fallback, so its lock is exercised
    images = [png(i, size=(24 + 8 * (i % 4), 16)) for i in range(10)]
    probe = Recognizer.from_bundle(fresh(built, tmp_path / "p", confidence_threshold=0.0))
    confs = sorted(probe.predict(x).confidence for x in images)
    out = fresh(built, tmp_path / "t", confidence_threshold=float(np.median(confs)))
    expected = [key(r) for r in Recognizer.from_bundle(out).predict_batch(images)]
    statuses = {k[2] for k in expected}
    assert "ok" in statuses and len(statuses) > 1

    shared = Recognizer.from_bundle(out)
    got: dict[int, list[tuple]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            got[t] = [key(shared.predict(images[(t + i) % 10])) for i in range(50)]
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in range(8):
        assert got[t] == [expected[(t + i) % 10] for i in range(50)]


IMPORT_CHECK = """
import sys, numpy as np
from stages.runtime import Recognizer
rec = Recognizer.from_bundle(sys.argv[1])
array = np.full((16, 40), 200, np.uint8)
image = open(sys.argv[2], "rb").read() if sys.argv[3] == "bytes" else array
rec.predict(image)
heavy = ("pydantic", "onnx", "cv2", "yaml")
print(sorted({m.split(".")[0] for m in sys.modules} & {*heavy, "PIL"}))
"""


@pytest.mark.parametrize(
    ("backend", "given", "loaded"), [("pillow", "bytes", ["PIL"]), ("numpy", "array", [])]
)
def test_runtime_imports_only_what_the_bundle_needs(
    tmp_path: Path, backend: str, given: str, loaded: list[str]
):
    pre = Preprocess(height=8, backend=backend, interpolation="bilinear")  # type: ignore[arg-type]
    out = make_bundle(tmp_path, [("float", float_model())], recipe(ort_format=False, pre=pre))
    (tmp_path / "x.png").write_bytes(png())
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(out), str(tmp_path / "x.png"), given],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout.replace("'", '"')) == loaded


def test_quantized_primary_is_not_float():
    # guards the fixture: the default bundle really pairs an int8 primary with a float fallback
    assert not is_float(quantized(float_model())) and is_float(sharpened(float_model()))
