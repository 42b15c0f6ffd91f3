"""The runtime on tiny bundles: inputs, every fallback step, the lazy fallback, threads, imports.

Bundles come from tests/builders.py (the real build and bundle code on tests/tiny.py models).
The default one pairs a dynamically quantized primary with the float stage before it as the
fallback. Manifests are edited by hand only to corrupt them on purpose.

The helpers `png`, `make_bundle`, `copy_bundle`, `edit_manifest` and `tamper` are shared with
the other runtime test files.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import builders
import numpy as np
import onnx
import pytest
import tiny
from PIL import Image

from ocr_bundles_runtime import BundleError, ImageError, Recognizer, Result
from ocr_bundles_runtime.preprocess import preprocess
from stages import modelio

ROOT = Path(__file__).resolve().parents[1]
QUANTIZED = [{"fix_output_shape": {}}, {"quantize_dynamic": {}}]  # int8 primary, float fallback
EXACT = [{"fix_output_shape": {}}]  # the only stage is the final model: fallback == primary


def make_bundle(
    root: Path,
    threshold: float = 0.5,
    fallback: str = "float",
    formats: tuple[str, ...] = ("onnx",),
    passes: list[dict[str, Any]] | None = None,
    model: onnx.ModelProto | None = None,
    **fields: Any,
) -> Path:
    """root/bundles/tiny by the real pipeline code; `fields` are more recipe fields."""
    bundle = {
        "formats": list(formats),
        "fallback": fallback,
        "confidence_threshold": threshold,
        **fields.pop("bundle", {}),
    }
    return builders.tiny_bundle(root, model, passes or QUANTIZED, bundle=bundle, **fields)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_manifest(folder: Path, **changes: Any) -> dict[str, Any]:
    """Corrupt manifest.json on purpose (it is not hash-covered: it holds the hashes)."""
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return doc


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def png(seed: int = 0, size: tuple[int, int] = (40, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def key(r: Result) -> tuple:
    return (r.text, r.confidence, r.status, r.model, r.char_probs, r.events)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def sure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Threshold 0: every image is answered by the primary."""
    return make_bundle(tmp_path_factory.mktemp("sure"), threshold=0.0)


@pytest.fixture(scope="module")
def unsure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Threshold 1: every image reruns with the fallback and still needs the server."""
    return make_bundle(tmp_path_factory.mktemp("unsure"), threshold=1.0)


def fresh(src: Path, tmp_path: Path) -> Path:
    return copy_bundle(src, tmp_path / "bundle")


# ---------------------------------------------------------------------------- loading


def test_bytes_path_and_array_agree(sure: Path, tmp_path: Path):
    rec = Recognizer.from_bundle(sure)
    data = png(3)
    (tmp_path / "x.png").write_bytes(data)
    arr = np.asarray(Image.open(io.BytesIO(data)))
    inputs = (data, tmp_path / "x.png", str(tmp_path / "x.png"), arr, bytearray(data))
    results = [rec.predict(x, return_probs=True) for x in inputs]
    assert len({key(r) for r in results}) == 1
    r = results[0]
    assert (r.status, r.model, r.events, rec.model, rec.events) == (
        "ok",
        "primary",
        (),
        "primary",
        [],
    )
    assert rec.model_file == "model.onnx"
    assert set(r.timings_ms) == {"preprocess", "infer", "decode", "server", "total"}
    assert r.timings_ms["total"] >= r.timings_ms["infer"] > 0
    assert r.timings_ms["server"] == 0
    assert r.char_probs is not None and len(r.char_probs) == len(r.text)
    assert 0.0 < r.confidence <= 1.0
    assert r.confidence == pytest.approx(min(r.char_probs)) if r.text else True
    assert rec.predict(data).char_probs is None
    assert json.loads(json.dumps(r.as_dict()))["text"] == r.text


def test_class_folder_is_accepted(built: Path, tmp_path: Path):
    """An older layout, build/<class>/bundle: the class folder finds its bundle/ folder."""
    copy_bundle(built, tmp_path / "cls" / "bundle")
    a = Recognizer.from_bundle(tmp_path / "cls").predict(png())
    assert key(a) == key(Recognizer.from_bundle(built).predict(png()))
    assert Recognizer.from_bundle(str(built)).spec.root == built


def test_missing_bundle_is_a_bundle_error(tmp_path: Path):
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        Recognizer.from_bundle(tmp_path)


def test_unavailable_provider_falls_through_to_the_next(built: Path, tmp_path: Path):
    providers = ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    out = make_bundle(tmp_path, runtime={"providers": providers})
    assert json.loads((out / "manifest.json").read_text())["runtime"]["providers"] == providers
    rec = Recognizer.from_bundle(out)
    assert rec.providers == ["CPUExecutionProvider"]
    assert any(e.startswith("provider_unavailable: NoSuchExecutionProvider") for e in rec.events)
    assert rec.predict(png()).text == Recognizer.from_bundle(built).predict(png()).text
    override = Recognizer.from_bundle(built, providers=["OtherMissingProvider"])
    assert override.providers == ["CPUExecutionProvider"]
    assert "OtherMissingProvider" in override.events[0]


def test_model_format_choice(tmp_path: Path):
    out = make_bundle(tmp_path, threshold=0.0, formats=("ort", "onnx"))
    default = Recognizer.from_bundle(out)
    onnx_rec = Recognizer.from_bundle(out, model_format="onnx")
    assert (default.model_file, onnx_rec.model_file) == ("model.ort", "model.onnx")
    for seed in range(4):
        a, b = default.predict(png(seed)), onnx_rec.predict(png(seed))
        assert a.text == b.text and a.confidence == pytest.approx(b.confidence, abs=1e-5)
    with pytest.raises(BundleError, match="not 'tflite'"):
        Recognizer.from_bundle(out, model_format="tflite")


# ---------------------------------------------------------------------------- damaged bundles


def test_tampered_primary_loads_the_fallback(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    tamper(out / "model.onnx")
    rec = Recognizer.from_bundle(out)
    assert rec.model == "fallback" and rec.model_file == "fallback.onnx"
    assert any(e.startswith("primary_failed: model.onnx: SHA-256") for e in rec.events)
    r = rec.predict(png())
    assert r.model == "fallback"


def test_unloadable_primary_with_valid_hash_loads_the_fallback(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    (out / "model.onnx").write_bytes(b"not a model")
    files = json.loads((out / "manifest.json").read_text())["files"]
    files["model.onnx"] = {"sha256": hashlib.sha256(b"not a model").hexdigest(), "bytes": 11}
    edit_manifest(out, files=files)
    rec = Recognizer.from_bundle(out)
    assert rec.model == "fallback"
    assert any(e.startswith("primary_failed: model.onnx: InvalidProtobuf") for e in rec.events)


def test_both_models_tampered_is_a_bundle_error(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    tamper(out / "model.onnx")
    (out / "fallback.onnx").unlink()
    with pytest.raises(BundleError, match="no model could be loaded") as e:
        Recognizer.from_bundle(out)
    assert "model.onnx" in str(e.value) and "fallback.onnx" in str(e.value)


def test_tampered_charset_or_manifest_is_a_bundle_error(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    (out / "charset.json").write_text('["", "x"]')
    with pytest.raises(BundleError, match=r"charset\.json: SHA-256"):
        Recognizer.from_bundle(out)
    edit_manifest(out, format_version=99)
    with pytest.raises(BundleError, match="format"):
        Recognizer.from_bundle(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        Recognizer.from_bundle(out)


def test_charset_not_matching_the_models_is_refused(built: Path, tmp_path: Path):
    out = fresh(built, tmp_path)
    text = json.dumps(["", "z", "y", "x", "w", "v", "u"]).encode()
    (out / "charset.json").write_bytes(text)
    files = json.loads((out / "manifest.json").read_text())["files"]
    files["charset.json"] = {"sha256": hashlib.sha256(text).hexdigest(), "bytes": len(text)}
    edit_manifest(out, files=files)
    with pytest.raises(BundleError, match=r"ocr\.charset metadata differs"):
        Recognizer.from_bundle(out)


def _corrupt(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc[p]
    doc[last] = value


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("output.layout", "CTB", "layout"),
        ("output.kind", "softmax", "kind"),
        ("output.blank", 99, "blank"),
        ("confidence_threshold", 1.5, "confidence_threshold"),
        ("preprocess.backend", "gpu", "backend"),
        ("preprocess.channels", 2, "channels"),
        ("preprocess.normalize", "zscore", "normalize"),
        ("preprocess.surprise", 1, "surprise"),
        ("runtime.graph_optimization_level", "max", "graph_optimization_level"),
        ("runtime.intra_op_threads", 0, "intra_op_threads"),
        ("models.primary", None, "models.primary"),
        ("models.primary.files", {"onnx": "ghost.onnx"}, "not listed"),
        ("escalation.url", "ftp://example.invalid/x", "not an http"),
        ("escalation.timeout_s", 0, "timeout"),
        ("input", None, "invalid"),
    ],
)
def test_a_corrupted_contract_is_refused_at_load(
    built: Path, tmp_path: Path, path: str, value: Any, match: str
):
    """A bad manifest value fails when the bundle loads, never on the first image."""
    out = fresh(built, tmp_path)
    doc = json.loads((out / "manifest.json").read_text())
    _corrupt(doc, path, value)
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=match):
        Recognizer.from_bundle(out)


@pytest.mark.parametrize(
    ("image", "code"),
    [(b"", "E_EMPTY"), (b"\x89PNG garbage", "E_DECODE"), (np.zeros((4, 4), np.float32), "E_INPUT")],
)
def test_bad_images_raise_typed_errors(built: Path, image: object, code: str):
    with pytest.raises(ImageError) as e:
        Recognizer.from_bundle(built).predict(image)
    assert e.value.code == code and e.value.retryable is False


# ---------------------------------------------------------------------------- the fallback


def test_the_fallback_loads_on_first_need(
    sure: Path, unsure: Path, monkeypatch: pytest.MonkeyPatch
):
    from ocr_bundles_runtime import recognizer

    read: list[str] = []
    real = recognizer.read_verified

    def spy(root: Path, manifest: dict[str, Any], name: str) -> bytes:
        read.append(name)
        return real(root, manifest, name)

    monkeypatch.setattr(recognizer, "read_verified", spy)
    rec = Recognizer.from_bundle(sure)
    assert [rec.predict(png(s)).status for s in range(5)] == ["ok"] * 5
    assert not rec.fallback_loaded and read == ["model.onnx"]  # sure images never load it

    read.clear()
    rec = Recognizer.from_bundle(unsure)
    assert rec.spec.models["fallback"].optional is True
    assert not rec.fallback_loaded and read == ["model.onnx"]
    r = rec.predict(png())
    assert rec.fallback_loaded and read == ["model.onnx", "fallback.onnx"]
    assert [e.split(":")[0] for e in r.events] == [
        "low_confidence",
        "fallback_pass",
        "needs_server",
    ]
    rec.predict(png(1))
    assert read == ["model.onnx", "fallback.onnx"]  # loaded once
    assert rec.load_fallback() is True

    explicit = Recognizer.from_bundle(unsure)
    assert not explicit.fallback_loaded
    assert explicit.load_fallback() is True and explicit.fallback_loaded


def test_loading_the_fallback_up_front_changes_no_result(unsure: Path):
    """The bench scores bundle+fallback with bundle's texts; this is why that is sound."""
    lazy, eager = Recognizer.from_bundle(unsure), Recognizer.from_bundle(unsure)
    assert eager.load_fallback() and not lazy.fallback_loaded
    for seed in range(6):
        a, b = lazy.predict(png(seed)), eager.predict(png(seed))
        fields = ("text", "status", "model", "confidence")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_tampered_fallback_only_disables_the_rerun(unsure: Path, tmp_path: Path):
    out = fresh(unsure, tmp_path)
    tamper(out / "fallback.onnx")
    rec = Recognizer.from_bundle(out)
    assert rec.events == []  # nothing is read before it is needed
    r = rec.predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert any(e.startswith("fallback_failed: fallback.onnx") for e in rec.events)
    assert "no_rerun: the fallback did not load" in r.events
    assert not rec.load_fallback() and not rec.fallback_loaded


def test_an_absent_optional_fallback_only_disables_reruns(unsure: Path, tmp_path: Path):
    out = fresh(unsure, tmp_path)
    (out / "fallback.onnx").unlink()  # an app may leave the optional file out
    rec = Recognizer.from_bundle(out)
    assert rec.events == [] and rec.model == "primary"
    r = rec.predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert r.events[1] == "no_rerun: the optional fallback (fallback.onnx) is not shipped"
    assert rec.events == [] and not rec.fallback_loaded  # no error, no load attempt


def test_a_bundle_without_fallback_works(tmp_path: Path):
    out = make_bundle(tmp_path, threshold=1.0, fallback="none")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fallback" not in manifest["models"] and manifest["optional"] == []
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("conformance"))
    assert names == ["charset.json", "manifest.json", "model.onnx"]
    rec = Recognizer.from_bundle(out)
    r = rec.predict(png())
    assert (r.status, r.model, rec.events) == ("needs_server", "primary", [])
    assert "no_rerun: the bundle has no fallback model" in r.events
    assert not rec.fallback_loaded


def _best_image(sure: Path) -> tuple[bytes, float, float]:
    """The image the float fallback is most surer of than the int8 primary: (png, p, f)."""
    rec = Recognizer.from_bundle(sure)
    fallback = rec._fallback_model()
    assert fallback is not None
    best = None
    for seed in range(12):
        x = preprocess(png(seed), rec.spec.preprocess)
        p, f = rec._infer(rec._active, x).confidence, rec._infer(fallback, x).confidence
        if best is None or f - p > best[2] - best[1]:
            best = (png(seed), p, f)
    assert best is not None
    return best


def test_low_confidence_reruns_with_the_fallback(sure: Path, tmp_path: Path):
    image, p, f = _best_image(sure)
    assert Recognizer.from_bundle(sure).predict(image).confidence == p
    only_fallback = fresh(sure, tmp_path / "b")
    tamper(only_fallback / "model.onnx")
    assert Recognizer.from_bundle(only_fallback).predict(image).confidence == f
    assert f > p  # the float fallback is the more confident model on this image

    rec = Recognizer.from_bundle(make_bundle(tmp_path / "c", threshold=(p + f) / 2))
    r = rec.predict(image)
    assert (r.status, r.model, r.confidence) == ("low_confidence_fallback", "fallback", f)
    assert [e.split(":")[0] for e in r.events] == ["low_confidence", "fallback_pass"]

    rec = Recognizer.from_bundle(make_bundle(tmp_path / "d", threshold=1.0))
    r = rec.predict(image)
    assert (r.status, r.model, r.confidence) == ("needs_server", "fallback", f)
    assert [e.split(":")[0] for e in r.events] == [
        "low_confidence",
        "fallback_pass",
        "needs_server",
    ]


def test_no_rerun_when_the_fallback_is_the_primary(tmp_path: Path):
    out = make_bundle(tmp_path, threshold=1.0, passes=EXACT)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files["model.onnx"]["sha256"] == files["fallback.onnx"]["sha256"]
    r = Recognizer.from_bundle(out).predict(png())
    assert (r.status, r.model) == ("needs_server", "primary")
    assert "no_rerun: fallback and primary are the same bytes" in r.events


def test_quantized_primary_is_not_float(built: Path):
    # guards the fixture: the default bundle really pairs an int8 primary with a float fallback
    fallback = json.loads((built / "manifest.json").read_text())["models"]["fallback"]
    assert fallback["float"] is True and fallback["optional"] is True
    assert not modelio.is_float(modelio.load(built / "model.onnx"))
    assert modelio.is_float(modelio.load(built / "fallback.onnx"))


# ---------------------------------------------------------------------------- batches, threads


def test_predict_batch_matches_predict(built: Path):
    rec = Recognizer.from_bundle(built)
    images = [png(i) for i in range(5)]
    assert [key(r) for r in rec.predict_batch(images)] == [key(rec.predict(x)) for x in images]
    with pytest.raises(ImageError, match=r"images\[1\]"):
        rec.predict_batch([png(0), b"junk"])


def test_infer_and_finish_on_a_batching_model(tmp_path: Path):
    """The server's path: one session run on a [N, C, H, W] batch, then finish() per image."""
    model = tiny.tiny_ctc(wrong_output_shape=False, batch=True)
    # float: dynamic int8 quantization scales activations over the whole batch, so a batch
    # of a quantized model does not give each image exactly what it gets alone
    out = make_bundle(tmp_path, threshold=0.0, model=model, fallback="none", passes=EXACT)
    rec = Recognizer.from_bundle(out)
    assert rec.spec.batch is True
    images = [png(i) for i in range(4)]  # equal widths: one batch
    xs = [preprocess(im, rec.spec.preprocess) for im in images]
    passes = rec.infer(np.concatenate(xs))
    assert len(passes) == 4
    t = time.perf_counter()
    for image, x, first in zip(images, xs, passes, strict=True):
        got, alone = rec.finish(image, x, first, t, t, True), rec.predict(image, True)
        assert (got.text, got.status, got.model) == (alone.text, alone.status, alone.model)
        assert got.confidence == pytest.approx(alone.confidence, abs=1e-5)


def test_threads_give_sequential_results(sure: Path, tmp_path: Path):
    # a threshold that sends some images to the lazily loaded fallback, so its lock is exercised
    images = [png(i, size=(24 + 8 * (i % 4), 16)) for i in range(10)]
    probe = Recognizer.from_bundle(sure)
    confs = sorted(probe.predict(x).confidence for x in images)
    out = make_bundle(tmp_path, threshold=float(np.median(confs)))
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


# ---------------------------------------------------------------------------- imports

IMPORT_CHECK = """
import sys, numpy as np
from ocr_bundles_runtime import Recognizer
rec = Recognizer.from_bundle(sys.argv[1])
array = np.full((16, 40), 200, np.uint8)
image = open(sys.argv[2], "rb").read() if sys.argv[3] == "bytes" else array
rec.predict(image)
heavy = {"pydantic", "onnx", "onnxsim", "cv2", "yaml", "dvc", "matplotlib", "PIL"}
names = {m.split(".")[0] for m in sys.modules} & heavy
names |= {m for m in sys.modules if m.split(".")[0] == "stages"}  # no pipeline code at all
print(sorted(names))
"""


@pytest.mark.parametrize(
    ("backend", "given", "loaded"), [("pillow", "bytes", ["PIL"]), ("numpy", "array", [])]
)
def test_runtime_imports_only_what_the_bundle_needs(
    tmp_path: Path, backend: str, given: str, loaded: list[str]
):
    out = make_bundle(tmp_path, preprocess={"backend": backend, "interpolation": "bilinear"})
    (tmp_path / "x.png").write_bytes(png())
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(out), str(tmp_path / "x.png"), given],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout.replace("'", '"')) == loaded
