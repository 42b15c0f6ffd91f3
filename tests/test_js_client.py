"""The JavaScript reference client (clients/js) against the Python side, on a v3 bundle built here.

The bundle: a tiny model that takes pixels as the v3 format says (uint8 [H, W, C], C 1/3/4)
and computes [T, 1, K] logits from them (brightness = channel sum, four statistics of it over
the rows, averaged over 4 columns per step, a fixed MatMul + bias). It ships as .ort (written
by onnxruntime) and .onnx, with a charset that holds a space (scoring.strip), hash-checked
files and a conformance.json computed with onnxruntime + ocr_bundles_runtime.decode.

The client must exist: `make js` installs clients/js/node_modules (`make test` does it first).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ocr_bundles_runtime.decode import Decoded, decode, to_time_major
from ocr_bundles_runtime.preprocess import Preprocess
from ocr_bundles_runtime.session import Runtime, make_session

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "js"
CLI = CLIENT / "cli.mjs"
BACKENDS = ("node", "web")
CHARSET = ["", "a", "b", "c", "x", " "]  # the space makes scoring.strip matter
STEP = 4  # columns per time step
TOLERANCE = 1e-4
CONFIDENCE_ATOL = 1e-6
NODE_TIMEOUT_S = 60
MAX_PIXELS = 2000  # input.max_pixels: no image above is decoded
RESIZED_HEIGHT = 8  # preprocess.height: with max_pixels 4000, no image wider than 500 resized


# ---- the bundle -------------------------------------------------------------------------------


def pixels_model(seed: int = 7) -> onnx.ModelProto:
    """pixels uint8 [H, W, C] -> logits [W // 4, 1, len(CHARSET)]; the head is centred on
    typical features, so every class wins somewhere."""
    rng = np.random.default_rng(seed)
    head_w = rng.normal(0, 12, (4, len(CHARSET))).astype(np.float32)
    typical = np.array([0.5, 0.7, 0.3, 0.3], np.float32)  # mean, max, min, mean square
    head_b = (rng.normal(0, 0.5, len(CHARSET)) - typical @ head_w).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(1 / (3 * 255), np.float32), "scale"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(head_w, "head_w"),
        numpy_helper.from_array(head_b, "head_b"),
    ]
    node = helper.make_node
    nodes = [
        node("Cast", ["pixels"], ["xf"], to=TensorProto.FLOAT),
        # a channel sum, not a mean: a gray image fed as RGB would read differently
        node("ReduceSum", ["xf", "ax2"], ["sum"], keepdims=0),  # [H, W]
        node("Mul", ["sum", "scale"], ["gray"]),
        node("ReduceMean", ["gray"], ["f_mean"], axes=[0], keepdims=1),  # [1, W] each
        node("ReduceMax", ["gray"], ["f_max"], axes=[0], keepdims=1),
        node("ReduceMin", ["gray"], ["f_min"], axes=[0], keepdims=1),
        node("Mul", ["gray", "gray"], ["sq"]),
        node("ReduceMean", ["sq"], ["f_sq"], axes=[0], keepdims=1),
        node("Concat", ["f_mean", "f_max", "f_min", "f_sq"], ["feat"], axis=0),  # [4, W]
        node("Unsqueeze", ["feat", "ax0"], ["feat3"]),  # [1, 4, W]
        node("AveragePool", ["feat3"], ["pooled"], kernel_shape=[STEP], strides=[STEP]),
        node("Squeeze", ["pooled", "ax0"], ["f_t"]),  # [4, T]
        node("Transpose", ["f_t"], ["t_f"], perm=[1, 0]),  # [T, 4]
        node("MatMul", ["t_f", "head_w"], ["mm"]),
        node("Add", ["mm", "head_b"], ["tk"]),
        node("Unsqueeze", ["tk", "ax1"], ["logits"]),  # [T, 1, K]
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_pixels_ctc",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["H", "W", "C"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", 1, len(CHARSET)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def to_ort(onnx_path: Path, ort_path: Path) -> None:
    """The .ort file onnxruntime writes after its basic (portable) optimizations."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def make_image(rng: np.random.Generator, mode: str) -> Image.Image:
    """Blocks of STEP columns, upper and lower half each of a random level, with noise."""
    h, w = int(rng.integers(6, 20)), int(rng.integers(4, 17)) * STEP + int(rng.integers(0, STEP))
    blocks = w // STEP + 1
    upper, lower = rng.integers(0, 256, (2, 1, blocks, 1))
    levels = np.concatenate([upper.repeat(h // 2, 0), lower.repeat(h - h // 2, 0)])
    noise = rng.integers(-40, 41, (h, w, 4))
    rgba = np.clip(levels.repeat(STEP, axis=1)[:, :w] + noise, 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(rgba[:, :, 0])
    return Image.fromarray(rgba[:, :, : len(mode)], mode)


def read_pixels(path: Path) -> np.ndarray:
    """An image as the client feeds it: Pillow's pixels as runtime/ocr_bundles_runtime/preprocess.py
    `pil_to_array` reads them, but RGBA kept straight (the graph composites on white)."""
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            arr = np.rint(np.asarray(im, np.float64) * (255 / 65535)).astype(np.uint8)
        elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            arr = np.asarray(im.convert("RGBA"))
        elif im.mode == "L":
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow writes 16 bits for gray only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def python_decoded(session, pixels: np.ndarray) -> tuple[Decoded, np.ndarray]:
    """ocr_bundles_runtime.decode's result for one image, and the [T, K] steps it decoded."""
    out = session.run(None, {"pixels": pixels})[0]
    return decode(out, CHARSET, "TBC", 0, with_probs=True, kind="logits"), to_time_major(out, "TBC")


def python_read(session, pixels: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(text, confidence, [T, K] steps) as the Python Recognizer reports them (strip: true)."""
    d, steps = python_decoded(session, pixels)
    return d.text.strip(), d.confidence or 0.0, steps


def vector(image: str, text: str, steps: np.ndarray) -> dict:
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return {
        "image": image,
        "text": text,
        "best": steps.argmax(axis=-1).tolist(),
        "value": top2[:, 1].astype(float).tolist(),
        "margin": (top2[:, 1] - top2[:, 0]).astype(float).tolist(),
    }


def file_entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_manifest(folder: Path, manifest: dict) -> None:
    manifest["files"] = {
        p.relative_to(folder).as_posix(): file_entry(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def build_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    onnx.save(pixels_model(), folder / "model.onnx")
    to_ort(folder / "model.onnx", folder / "model.ort")
    (folder / "charset.json").write_text(json.dumps(CHARSET))
    session = make_session(str(folder / "model.ort"), Runtime())
    rng = np.random.default_rng(11)
    (folder / "conformance").mkdir()
    vectors = []
    for i, mode in enumerate(("L", "RGB", "RGBA")):
        name = f"conformance/{i:02d}.png"
        make_image(rng, mode).save(folder / name)
        text, _, steps = python_read(session, read_pixels(folder / name))
        vectors.append(vector(name, text, steps))
    conformance = {"tolerance": TOLERANCE, "vectors": vectors}
    (folder / "conformance.json").write_text(json.dumps(conformance))
    write_manifest(folder, manifest_v4())
    return folder


def manifest_v4() -> dict:
    """The fields the client reads, named as ocr_bundles_runtime/manifest_record.py names them."""
    return {
        "format": "ocr-ctc-bundle",
        "format_version": 4,
        "input": {
            "name": "pixels",
            "feed": "pixels",
            "dtype": "uint8",
            "shape": ["height", "width", "channels"],
            "channels": [1, 3, 4],
            "max_pixels": MAX_PIXELS,
        },
        "output": {
            "name": "logits",
            "classes": len(CHARSET),
            "layout": "TBC",
            "blank": 0,
            "kind": "logits",
        },
        "charset": "charset.json",
        "models": {
            "primary": {"files": {"ort": "model.ort", "onnx": "model.onnx"}, "optional": False}
        },
        "preprocess": {**Preprocess().as_dict(), "height": RESIZED_HEIGHT, "max_pixels": 4000},
        "runtime": {**Runtime().as_dict(), "graph_optimization_level": "basic"},
        "scoring": {"strip": True, "casefold": False},
        "confidence_threshold": 0.5,
        "conformance": "conformance.json",
    }


def edited(bundle: Path, tmp_path: Path, change) -> Path:
    """A copy of `bundle` after `change(folder, manifest)`, hashes rewritten."""
    folder = tmp_path / "edited"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(folder, manifest)
    write_manifest(folder, manifest)
    return folder


# ---- fixtures -------------------------------------------------------------------------------


def node(*args: str, cwd: Path = CLIENT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", *args], cwd=cwd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S
    )


def cli(bundle: Path, *args: str, backend: str = "node") -> subprocess.CompletedProcess:
    return node(str(CLI), "--bundle", str(bundle), "--backend", backend, *args)


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def client() -> Path:
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: install Node.js >= 20, then `make js`")
    for package in ("onnxruntime-node", "onnxruntime-web", "pngjs", "jpeg-js"):
        if not (CLIENT / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"clients/js/node_modules/{package} is missing: run `make js`")
    return CLI


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, client: Path) -> Path:
    return build_bundle(tmp_path_factory.mktemp("js") / "bundle")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20 images: gray, RGB and RGBA PNGs, and one RGB JPEG of flat gray 8x8 blocks. jpeg-js
    and Pillow (libjpeg-turbo) agree on those pixels only: colour conversion rounds differently
    (+-1) and noisy or chroma-subsampled content decodes differently."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    paths = []
    for i in range(19):
        mode = ("L", "RGB", "RGBA")[i % 3]
        paths.append(folder / f"{i:02d}-{mode}.png")
        make_image(rng, mode).save(paths[-1])
    blocks = rng.integers(0, 256, (2, 8, 1)).repeat(8, axis=0).repeat(8, axis=1).repeat(3, axis=2)
    paths.append(folder / "19-RGB.jpg")
    Image.fromarray(blocks.astype(np.uint8), "RGB").save(paths[-1], quality=100, subsampling=0)
    return paths


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_passes_on_the_good_bundle(bundle: Path, backend: str):
    proc = cli(bundle, "check", backend=backend)
    assert proc.returncode == 0, proc.stderr
    vectors = lines(proc)
    assert [v["image"] for v in vectors] == [f"conformance/{i:02d}.png" for i in range(3)]
    assert all(v["ok"] and v["max_value_diff"] <= TOLERANCE for v in vectors), vectors
    assert "healthy: 3/3" in proc.stderr


def test_check_fails_when_an_expected_text_changes(bundle: Path, tmp_path: Path):
    def change(folder: Path, manifest: dict) -> None:
        doc = json.loads((folder / "conformance.json").read_text())
        doc["vectors"][1]["text"] += "zz"
        (folder / "conformance.json").write_text(json.dumps(doc))

    proc = cli(edited(bundle, tmp_path, change), "check")
    assert proc.returncode == 1, proc.stderr
    ok = [v["ok"] for v in lines(proc)]
    assert ok == [True, False, True]
    assert "zz" in lines(proc)[1]["reasons"][0]
    assert "NOT healthy: 2/3" in proc.stderr


def test_check_fails_without_conformance_vectors(bundle: Path, tmp_path: Path):
    proc = cli(edited(bundle, tmp_path, lambda _, m: m.pop("conformance")), "check")
    assert proc.returncode == 1
    assert "NOT healthy: 0/0" in proc.stderr and "no conformance vectors" in proc.stderr


def test_check_fails_when_a_confident_best_class_changes(bundle: Path, tmp_path: Path):
    def change(folder: Path, manifest: dict) -> None:
        doc = json.loads((folder / "conformance.json").read_text())
        v = doc["vectors"][0]
        t = int(np.argmax(v["margin"]))  # far above 2 * tolerance
        v["best"][t] = (v["best"][t] + 1) % len(CHARSET)
        (folder / "conformance.json").write_text(json.dumps(doc))

    proc = cli(edited(bundle, tmp_path, change), "check")
    assert proc.returncode == 1, proc.stderr
    assert "best class differs" in lines(proc)[0]["reasons"][0]


def test_a_file_with_other_bytes_than_the_manifest_says_is_refused(bundle: Path, tmp_path: Path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    with (folder / "charset.json").open("a") as f:
        f.write(" ")
    proc = cli(folder, "check")
    assert proc.returncode == 2
    assert "charset.json: SHA-256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["../charset.json", "/etc/hostname", "sub\\charset.json"])
def test_a_path_that_leaves_the_folder_is_refused(bundle: Path, tmp_path: Path, name: str):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["charset"] = name
    manifest["files"][name] = manifest["files"]["charset.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = cli(folder, "check")
    assert proc.returncode == 2
    assert f"manifest.json: path {json.dumps(name)} leaves the bundle folder" in proc.stderr


def test_the_ort_file_is_the_one_read(bundle: Path, tmp_path: Path):
    """model.onnx is corrupt and the check still passes: the primary's .ort comes first."""
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    (folder / "model.onnx").write_bytes(b"not a model")
    assert cli(folder, "check").returncode == 0


def test_a_v2_manifest_is_refused(bundle: Path, tmp_path: Path):
    proc = cli(edited(bundle, tmp_path, lambda _, m: m.update(format_version=2)), "check")
    assert proc.returncode == 2
    assert "manifest.json: format" in proc.stderr
    assert "v2 is not" in proc.stderr and "rebuild the bundle" in proc.stderr


def test_a_tensor_feed_is_refused(bundle: Path, tmp_path: Path):
    proc = cli(edited(bundle, tmp_path, lambda _, m: m["input"].update(feed="tensor")), "check")
    assert proc.returncode == 2
    assert "manifest.json: input.feed" in proc.stderr
    assert "bundle.preprocess: graph" in proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_gives_the_python_texts_and_confidences(
    bundle: Path, images: list[Path], backend: str
):
    session = make_session(str(bundle / "model.ort"), Runtime())
    want = {str(p): python_read(session, read_pixels(p))[:2] for p in images}
    raw = [python_decoded(session, read_pixels(p))[0].text for p in images]
    assert len({text for text, _ in want.values()}) >= 10  # the images do read differently
    assert any(t != t.strip() for t in raw)  # and scoring.strip matters for some
    assert {read_pixels(p).shape[2] for p in images} == {1, 3, 4}
    proc = cli(bundle, "read", *map(str, images), backend=backend)
    assert proc.returncode == 0, proc.stderr
    got = lines(proc)
    assert [g["image"] for g in got] == list(want)
    for g in got:
        text, confidence = want[g["image"]]
        assert g["text"] == text, g
        assert abs(g["confidence"] - confidence) <= CONFIDENCE_ATOL, g


PIXELS_PROBE = """
import { readFileSync } from "node:fs";
import { decodeImage } from "./src/image.mjs";
const out = process.argv.slice(1).map((file) => {
  const { data, height, width, channels } = decodeImage(readFileSync(file), file);
  return { shape: [height, width, channels], data: Array.from(data) };
});
console.log(JSON.stringify(out));
"""


def test_png_pixels_equal_pillows(client: Path, tmp_path: Path):
    """Every PNG kind as Pillow reads it: 16-bit samples, palettes with and without alpha,
    gray + alpha, and tRNS colour keys (ignored, as the Python runtime does)."""
    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, :2] = [10, 20, 30, 255]  # the colour key below
    files = {
        "L": Image.fromarray(rgba[:, :, 0]),
        "RGB": Image.fromarray(rgba[:, :, :3]),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba[:, :, [0, 3]], "LA"),
        "P": Image.fromarray(rgba[:, :, :3]).quantize(16),
        "I;16": Image.fromarray(rng.integers(0, 65536, (5, 7)).astype(np.uint16)),
    }
    paths = []
    for mode, im in files.items():
        paths.append(tmp_path / f"{mode.replace(';', '')}.png")
        im.save(paths[-1])
    keyed = {
        "RGB-key": (files["RGB"], (10, 20, 30)),
        "L-key": (files["L"], 10),
        "P-alpha": (files["P"], 3),
    }
    for name, (im, key) in keyed.items():
        paths.append(tmp_path / f"{name}.png")
        im.save(paths[-1], transparency=key)
    paths.append(tmp_path / "RGB16.png")
    png16(paths[-1], rng.integers(0, 65536, (4, 3, 3)))
    proc = node("--input-type=module", "-e", PIXELS_PROBE, *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    for path, got in zip(paths, json.loads(proc.stdout), strict=True):
        want = read_pixels(path)
        assert got["shape"] == list(want.shape), path.name
        assert got["data"] == want.ravel().tolist(), path.name
    with Image.open(tmp_path / "P-alpha.png") as im:
        assert im.mode == "P" and "transparency" in im.info  # the case stays what it tests


CTC_PROBE = """
import { readFileSync } from "node:fs";
import { decode } from "./src/ctc.mjs";
const cases = JSON.parse(readFileSync(process.argv[1], "utf8"));
const out = cases.map(({ steps, T, C, blank, kind }) =>
  decode({ T, C, data: Float32Array.from(steps.flat()) }, CHARSET, blank, kind));
console.log(JSON.stringify(out));
"""


def test_ctc_decode_equals_stages_runtime_decode(client: Path, tmp_path: Path):
    """Ties (numpy's first index), repeats, blanks, no character (the mean), no steps, and
    already-softmaxed outputs, on float32 values."""
    rng = np.random.default_rng(2)
    k = len(CHARSET)
    cases = [rng.normal(0, 3, (t, k)).astype(np.float32) for t in (1, 5, 12, 40)]
    cases.append(np.round(rng.normal(0, 1, (30, k)), 0).astype(np.float32))  # many ties
    cases.append(np.zeros((6, k), np.float32))  # all tie: best is class 0 (blank), no text
    cases.append(np.eye(k, dtype=np.float32)[[2, 2, 0, 2, 3, 3]])  # repeats across a blank
    cases.append(np.zeros((0, k), np.float32))
    probs = np.exp(cases[2]) / np.exp(cases[2]).sum(-1, keepdims=True)
    runs = [(c, 0, "logits") for c in cases] + [(cases[3], 2, "logits")]
    runs.append((probs.astype(np.float32), 0, "probabilities"))
    doc = [
        {"steps": c.tolist(), "T": len(c), "C": k, "blank": blank, "kind": kind}
        for c, blank, kind in runs
    ]
    (tmp_path / "cases.json").write_text(json.dumps(doc))
    code = CTC_PROBE.replace("CHARSET", json.dumps(CHARSET))
    proc = node("--input-type=module", "-e", code, str(tmp_path / "cases.json"))
    assert proc.returncode == 0, proc.stderr
    for got, (steps, blank, kind) in zip(json.loads(proc.stdout), runs, strict=True):
        want = decode(steps, CHARSET, "TBC", blank, with_probs=True, kind=kind)
        assert got["text"] == want.text
        assert abs(got["confidence"] - want.confidence) <= 1e-12, (got, want)
        assert got["steps"]["best"] == steps.argmax(-1).tolist()


def test_a_garbage_image_gives_an_error_line_and_the_others_still_read(
    bundle: Path, images: list[Path], tmp_path: Path
):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\n{garbage}\n{tmp_path / 'missing.png'}\n{images[1]}\n")
    proc = cli(bundle, "read", "--list", str(listing))
    assert proc.returncode == 1
    got = lines(proc)
    assert [("error" in g, "text" in g) for g in got] == [
        (False, True),
        (True, False),
        (True, False),
        (False, True),
    ]
    assert got[1]["error"].startswith(f"{garbage}: undecodable PNG")
    assert "cannot read (ENOENT)" in got[2]["error"]


def test_images_too_large_are_refused_before_running(bundle: Path, images: list[Path], tmp_path):
    """input.max_pixels on the decoded size (PNG and JPEG), preprocess.max_pixels on the size
    the graph would resize to (2 x 600 -> 2400 x 8 > 4000), as the Python runtime refuses."""
    big, strip = tmp_path / "big.png", tmp_path / "strip.png"
    Image.fromarray(np.zeros((40, 51), np.uint8)).save(big)
    Image.fromarray(np.zeros((40, 51, 3), np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(np.zeros((2, 600), np.uint8)).save(strip)
    proc = cli(bundle, "read", str(images[0]), str(big), str(tmp_path / "big.jpg"), str(strip))
    assert proc.returncode == 1
    got = lines(proc)
    assert "text" in got[0]
    assert got[1]["error"] == f"{big}: 51x40 pixels > limit {MAX_PIXELS}"
    assert "51x40 pixels > limit" in got[2]["error"]
    assert got[3]["error"] == f"{strip}: 600x2 would resize to 2400x8 pixels > limit 4000"


def test_usage_errors_exit_2_with_one_line(bundle: Path):
    for args in (["read"], ["nonsense"], ["--backend", "gpu", "check"]):
        proc = node(str(CLI), "--bundle", str(bundle), *args)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# The session's config entries reach onnxruntime through SessionOptions `extra`.
PROBE = """
import { readFileSync } from "node:fs";
import { loadBackend, sessionOptions } from "./src/recognizer.mjs";
const [backend, file] = process.argv.slice(1);
const ort = await loadBackend(backend);
const model = new Uint8Array(readFileSync(file));
const runtime = { intraOpThreads: 1, graphOptimizationLevel: "all", allowSpinning: false,
  enableCpuMemArena: true, enableMemPattern: true };
const a = new ort.Tensor("uint8", new Uint8Array(64).fill(255), [1, 64]);
const out = {};
for (const int8Kernels of ["exact", "fast"]) {
  const options = sessionOptions({ ...runtime, int8Kernels }, backend);
  const s = await ort.InferenceSession.create(model, options);
  out[int8Kernels] = Array.from((await s.run({ a })).y.data);
}
const opts = sessionOptions({ ...runtime, int8Kernels: "exact" }, backend);
opts.extra.session.load_model_format = "ORT";  // an .onnx file then fails to load
out.ort_only = await ort.InferenceSession.create(model, opts).then(() => "loaded", () => "refused");
console.log(JSON.stringify(out));
"""


def saturating_matmul() -> onnx.ModelProto:
    """MatMulInteger [1, 64] x [64, 8] whose u8*s8 pair sums overflow int16 (2*255*127), as in
    tests/test_int8_kernels.py."""
    b = np.full((64, 8), 127, np.int8)
    b[:, 1::2] = -128
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "sat",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnxruntime-node 1.30 and -web 1.31 read IR <= 13; onnx 1.23 writes 14
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_config_entries_reach_onnxruntime(client: Path, tmp_path: Path, backend: str):
    """load_model_format=ORT refuses an .onnx file, so `extra` arrives; exact int8 kernels give
    the integer product, and on node fast ones give what Python's fast kernels give on this CPU
    (saturated sums on x86 with AVX2 and without VNNI: there only an entry that arrives passes)."""
    model = saturating_matmul()
    onnx.save(model, tmp_path / "sat.onnx")
    proc = node("--input-type=module", "-e", PROBE, backend, str(tmp_path / "sat.onnx"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["ort_only"] == "refused"
    a = np.full((1, 64), 255, np.uint8)
    b = numpy_helper.to_array(model.graph.initializer[0])
    assert got["exact"] == (a.astype(np.int64) @ b.astype(np.int64))[0].tolist()
    if backend == "node":  # the same native kernels as Python's onnxruntime
        fast = make_session(model.SerializeToString(), Runtime(int8_kernels="fast"))
        assert got["fast"] == fast.run(None, {"a": a})[0][0].tolist()
