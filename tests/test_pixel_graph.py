"""The pixel graph gives preprocess()'s tensor bit for bit, and attach() keeps a model's outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ocr_bundles_runtime.preprocess import Normalization, Preprocess, preprocess
from stages import pixel_graph
from stages.pixel_graph import MAX_OPSET, MIN_OPSET, attach, pixels_graph, unsupported

SPECS = {
    "lanczos-gray-after": Preprocess(),
    "lanczos-gray-before": Preprocess(grayscale="before_resize"),
    "bilinear-signed": Preprocess(interpolation="bilinear", normalize="signed"),
    "area-h32": Preprocess(interpolation="area", height=32),
    "rgb-imagenet": Preprocess(channels=3, normalize="imagenet"),
    "bgr-h48-signed": Preprocess(channels=3, channel_order="bgr", height=48, normalize="signed"),
    "max-and-pad-128": Preprocess(max_width=128, pad_to_width=128, pad_value=-1.0),
    "pad-200": Preprocess(pad_to_width=200, pad_value=0.5, normalize="signed"),
    "bilinear-scale-0.75": Preprocess(
        interpolation="bilinear", grayscale="before_resize", width_scale=0.75
    ),
    "rgb-area-scale-1.5": Preprocess(
        channels=3, interpolation="area", width_scale=1.5, max_width=300
    ),
    "custom-scale": Preprocess(normalize=Normalization(scale=127.5, mean=(1.0,), std=(0.5,))),
}


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _natural(h: int, w: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth shading plus noise and one dark stroke: edges are where Lanczos rings and clips."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for _ in range(c):
        wave = np.sin(xx / rng.uniform(2, 40) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(2, 30))
        planes.append(128 + rng.uniform(-40, 40) + 100 * wave + rng.normal(0, 6, (h, w)))
    img = np.clip(np.stack(planes, axis=-1), 0, 255)
    img[h // 3 : h // 3 + max(1, h // 6), w // 4 : 3 * w // 4] = 8
    if c == 4:  # fully transparent and fully opaque columns too
        img[:, :1, 3], img[:, -1:, 3] = 0, 255
    return np.rint(img).astype(np.uint8)


def _cases(height: int, seed: int) -> list[np.ndarray]:
    """Sizes that hit each branch, then random ones; channels cycle 1, 3, 4."""
    sizes = [
        (height, 100),  # target == size: no resize at all
        (height, 10),  # vertical pass skipped, width raised to MIN_WIDTH
        (200, 30),  # both shrink, width raised to MIN_WIDTH
        (5, 5),  # tiny: both grow
        (20, 300),  # both grow
        (7, 450),  # height grows a lot
        (200, 500),  # both shrink, horizontal pass first
        (200, 60),  # height shrinks far more: vertical pass first
        (2 * height, 37),
        (height - 1, 16),
        (150, 499),
    ]
    rng = np.random.default_rng(seed)
    sizes += [(int(rng.integers(5, 201)), int(rng.integers(5, 501))) for _ in range(13)]
    images = []
    for i, (h, w) in enumerate(sizes):
        c = (1, 3, 4)[i % 3]
        noise = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        images.append(noise if i % 2 else _natural(h, w, c, rng))
    return images


def _mismatches(spec: Preprocess, opset: int, images: list[np.ndarray]) -> list[str]:
    run = _session(pixels_graph(spec, opset))
    bad = []
    for img in images:
        want = preprocess(img, spec)
        got = run.run(None, {"pixels": img})[0]
        if got.dtype != np.float32 or not np.array_equal(got, want):
            bad.append(f"{img.shape} -> got {got.shape}, want {want.shape}")
    return bad


@pytest.mark.parametrize("name", SPECS)
def test_graph_equals_preprocess_bit_for_bit(name: str) -> None:
    spec = SPECS[name]
    images = _cases(spec.height, seed=len(name))
    assert _mismatches(spec, 13, images) == []


def test_every_opset_from_12_builds_and_matches() -> None:
    spec = Preprocess(channels=3, normalize="signed", pad_to_width=300)
    images = _cases(spec.height, seed=1)[:4]
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        model = pixels_graph(spec, opset)
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain for o in model.opset_import} == {""}
        assert _mismatches(spec, opset, images) == [], opset


def test_vertical_pass_first_when_height_shrinks_most() -> None:
    """200x60 -> 64x19: Pillow 13 resamples rows first, and the order changes the pixels."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (200, 60, 3), dtype=np.uint8)
    spec = Preprocess(channels=3)
    pil, lanczos = Image.fromarray(img), Image.Resampling.LANCZOS
    direct = np.asarray(pil.resize((19, 64), lanczos))
    rows_last = np.asarray(pil.resize((19, 200), lanczos).resize((19, 64), lanczos))
    assert not np.array_equal(direct, rows_last)  # else this case could not tell the orders apart
    assert _mismatches(spec, 13, [img]) == []


def _graph_kernel(how: str) -> ort.InferenceSession:
    """The graph's coefficient step alone: n, m -> (input index, int32 coefficient) per slot."""
    b = pixel_graph._Builder()
    index, coef = pixel_graph._coeffs(b, "n", "m", how)
    b.op("Identity", index, out="index")
    b.op("Identity", coef, out="coef")
    sizes = [helper.make_tensor_value_info(x, TensorProto.INT64, []) for x in "nm"]
    outs = [
        helper.make_tensor_value_info(x, t, None)
        for x, t in (("index", TensorProto.INT64), ("coef", TensorProto.INT32))
    ]
    graph = helper.make_graph(b.nodes, "kernel", sizes, outs, b.inits)
    return _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _pillow_kernel(n: int, m: int, how: str) -> np.ndarray:
    """Pillow's own [m, n] 22-bit kernel: an int32 ('I') image resizes with ROUND_UP(sum * k),
    so impulses of 2^22 come out as exactly the 8-bit path's (int)(0.5 + k * 2^22)."""
    method = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR}
    impulses = Image.fromarray(np.eye(n, dtype=np.int32) << 22)
    return np.asarray(impulses.resize((m, n), method.get(how, Image.Resampling.BOX))).T


@pytest.mark.parametrize("how", ["lanczos", "bilinear", "area"])
def test_kernel_equals_pillows_fixed_point_coefficients(how: str) -> None:
    """Output pixels hide a coefficient off by one (it rarely moves an 8-bit value): compare
    the kernels themselves, for heights into the model and random widths both ways."""
    rng = np.random.default_rng(7)
    pairs = [(n, m) for n in range(1, 301, 3) for m in (32, 48, 64)]
    pairs += [(int(rng.integers(1, 700)), int(rng.integers(1, 700))) for _ in range(150)]
    pairs += [(1999, 64), (2000, 1999), (3, 2), (64, 2000)]
    run, bad = _graph_kernel(how), []
    for n, m in pairs:
        index, coef = run.run(None, {"n": np.array(n), "m": np.array(m)})
        dense = np.zeros((m, n), np.int64)
        np.add.at(dense, (np.arange(m)[:, None], index), coef)  # unused slots hold 0
        if not np.array_equal(dense, _pillow_kernel(n, m, how)):
            bad.append((n, m))
    assert bad == []


def test_luma_matches_pillow_on_many_colors() -> None:
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (8, 32768, 3), dtype=np.uint8)  # height 8: no resize
    spec = Preprocess(height=8)
    got = _session(pixels_graph(spec, 13)).run(None, {"pixels": img})[0]
    want = np.asarray(Image.fromarray(img).convert("L"), np.float32) / np.float32(255)
    assert np.array_equal(got[0, 0], want)


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        (Preprocess(backend="opencv"), "opencv"),
        (Preprocess(backend="numpy", interpolation="bilinear"), "numpy"),
        (Preprocess(interpolation="nearest"), "nearest"),
    ],
)
def test_unsupported_specs_are_refused(spec: Preprocess, word: str) -> None:
    reason = unsupported(spec)
    assert reason is not None and word in reason
    with pytest.raises(ValueError, match=word):
        attach(_tiny(13), spec)
    with pytest.raises(ValueError, match=word):
        pixels_graph(spec, 13)


def test_supported_specs_have_no_reason() -> None:
    assert all(unsupported(spec) is None for spec in SPECS.values())


def _tiny(
    opset: int, width: int | str = "w", channels: int = 1, height: int = 64
) -> onnx.ModelProto:
    """image float32 [1, C, H, W] -> Conv 3x3 -> GlobalAveragePool -> [1, 2, 1, 1]."""
    rng = np.random.default_rng(opset)
    weight = rng.normal(0, 0.5, (2, channels, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "weight"], ["conv"], name="conv"),
            helper.make_node("GlobalAveragePool", ["conv"], ["score"], name="pool"),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, height, width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2, 1, 1])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    helper.set_model_props(model, {"charset": "abc", "input_contract": "tiny"})
    return model


@pytest.mark.parametrize(
    ("opset", "channels", "spec"),
    [
        (12, 1, Preprocess()),
        (13, 3, Preprocess(channels=3, normalize="imagenet", interpolation="bilinear")),
        (17, 1, Preprocess(interpolation="area", normalize="signed")),
        (21, 3, Preprocess(channels=3, channel_order="bgr")),
    ],
)
def test_attach_keeps_the_model(opset: int, channels: int, spec: Preprocess) -> None:
    tiny = _tiny(opset, channels=channels)
    composed = attach(tiny, spec)
    onnx.checker.check_model(composed, full_check=True)
    assert [i.name for i in composed.graph.input] == ["pixels"]
    assert [o.name for o in composed.graph.output] == ["score"]
    assert list(composed.opset_import) == list(tiny.opset_import)
    assert composed.metadata_props == tiny.metadata_props
    assert {"weight"} < {t.name for t in composed.graph.initializer}
    plain, full = _session(tiny), _session(composed)
    for img in _cases(spec.height, seed=opset)[:8]:
        want = plain.run(None, {"image": preprocess(img, spec)})[0]
        assert np.array_equal(full.run(None, {"pixels": img})[0], want), img.shape


def test_attach_to_a_fixed_width_model() -> None:
    spec = Preprocess(max_width=128, pad_to_width=128)
    tiny = _tiny(13, width=128)
    composed = attach(tiny, spec)
    plain, full = _session(tiny), _session(composed)
    for img in _cases(spec.height, seed=5)[:8]:
        want = plain.run(None, {"image": preprocess(img, spec)})[0]
        assert np.array_equal(full.run(None, {"pixels": img})[0], want), img.shape


def test_attach_refuses_what_it_cannot_wire() -> None:
    two = _tiny(13)
    two.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(ValueError, match="2 inputs"):
        attach(two, Preprocess())
    with pytest.raises(ValueError, match="shape"):
        attach(_tiny(13, channels=3), Preprocess(channels=1))
    with pytest.raises(ValueError, match="shape"):
        attach(_tiny(13, height=32), Preprocess())
    taken = _tiny(13)  # e.g. a model attached before: its names sit under the same prefix
    taken.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "pixels/c0"))
    with pytest.raises(ValueError, match="names"):
        attach(taken, Preprocess())


def test_ort_format_runs_the_same(tmp_path: Path) -> None:
    """The .ort model gives preprocess()'s tensor and the score the converted tiny model gives.

    Compared .ort to .ort: the converter's Conv layout rewrite moves the tiny model's own
    score by an ulp, with or without the pixel graph in front."""
    spec = Preprocess(channels=3, normalize="signed")
    tiny = _tiny(13, channels=3)
    composed = attach(tiny, spec)
    composed.graph.output.append(helper.make_tensor_value_info("image", TensorProto.FLOAT, None))
    onnx.save(tiny, tmp_path / "tiny.onnx")
    onnx.save(composed, tmp_path / "composed.onnx")
    tool = "onnxruntime.tools.convert_onnx_models_to_ort"
    subprocess.run([sys.executable, "-m", tool, str(tmp_path)], check=True, capture_output=True)
    plain, full = _session(str(tmp_path / "tiny.ort")), _session(str(tmp_path / "composed.ort"))
    for img in _cases(spec.height, seed=6)[:6]:
        tensor = preprocess(img, spec)
        score, image = full.run(None, {"pixels": img})
        assert np.array_equal(image, tensor), img.shape
        assert np.array_equal(score, plain.run(None, {"image": tensor})[0]), img.shape
