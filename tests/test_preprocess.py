"""Image -> tensor: shapes, normalization, ddddocr parity, backends, formats and errors."""

from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ocr_bundles_runtime import preprocess as pp
from ocr_bundles_runtime.preprocess import (
    IMAGE_ERRORS,
    PRESETS,
    ImageError,
    Normalization,
    Preprocess,
    preprocess,
)
from stages.data.clean import CaptchaStyle, sample

BACKENDS = ["pillow", "opencv", "numpy"]


def _spec(backend: str, **kw) -> Preprocess:
    """numpy has no Lanczos; the others keep the default unless asked."""
    if backend == "numpy":
        kw.setdefault("interpolation", "bilinear")
    return Preprocess(backend=backend, **kw)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed 8-bit gray PNG header declaring width x height, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def captchas() -> list[bytes]:
    """160x60 captchas as the clean data source draws them."""
    style = CaptchaStyle(alphabet="abcdefghjkmnpqrstuvwxyz23456789")
    return [sample(style, 4242, i)[1] for i in range(4)]


def _gray(value: int, size: tuple[int, int] = (40, 64)) -> bytes:
    return encode(Image.new("RGB", size, (value, value, value)))


# ---------------------------------------------------------------------------- shape and values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("size", "kw", "width"),
    [
        ((160, 60), {}, 170),  # int(160 * 64/60)
        ((160, 60), {"width_scale": 0.5}, 85),  # int(160 * 64/60 * 0.5)
        ((100, 64), {}, 100),  # already the model height: no resize
        ((300, 32), {"height": 32, "width_scale": 0.75}, 225),
        ((10, 200), {}, pp.MIN_WIDTH),  # int(3.2) -> at least 16 columns
        ((1, 1), {}, 64),
    ],
)
def test_output_shape_and_dtype(backend, size, kw, width):
    x = preprocess(encode(Image.new("RGB", size, (10, 200, 30))), _spec(backend, **kw))
    assert x.shape == (1, 1, kw.get("height", 64), width)
    assert x.dtype == np.float32
    assert x.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_channels(backend):
    x = preprocess(_gray(255), _spec(backend, channels=3))
    assert x.shape == (1, 3, 64, 40)
    # a gray source image repeated to 3 channels
    x = preprocess(encode(Image.new("L", (40, 64), 0)), _spec(backend, channels=3))
    assert x.shape == (1, 3, 64, 40) and x.max() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_unit_and_signed(backend):
    for value, unit, signed in [(0, 0.0, -1.0), (255, 1.0, 1.0), (51, 0.2, -0.6)]:
        data = _gray(value)
        x = preprocess(data, _spec(backend))
        np.testing.assert_allclose(x, unit, atol=1e-6)
        y = preprocess(data, _spec(backend, normalize="signed"))
        np.testing.assert_allclose(y, signed, atol=1e-6)


def test_luma_matches_pillow_L():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 99]]], np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    for backend in BACKENDS:
        got = pp.to_gray(rgb, backend)
        assert got.dtype == np.uint8
        assert np.abs(got.astype(int) - expected).max() <= 1, backend
    np.testing.assert_array_equal(pp.to_gray(rgb, "pillow"), expected)


# ---------------------------------------------------------------------------- ddddocr parity


def _ddddocr_preprocess(png: bytes) -> np.ndarray:
    """ddddocr 1.6.1's own code path for its default model (OCREngine._preprocess_image)."""
    from ddddocr.core.ocr_engine import OCREngine

    engine = SimpleNamespace(use_import_onnx=False)  # skip loading the 54 MB model
    return OCREngine._preprocess_image(engine, Image.open(io.BytesIO(png)), False)


def _ddddocr_by_hand(png: bytes) -> np.ndarray:
    """The same steps written out: Lanczos resize of the RGB image, convert('L'), /255."""
    im = Image.open(io.BytesIO(png))
    w = int(im.size[0] * (64 / im.size[1]))
    gray = im.resize((w, 64), Image.Resampling.LANCZOS).convert("L")
    return (np.asarray(gray).astype(np.float32) / 255.0)[None, None]


def test_ddddocr_reference_is_what_we_think(captchas):
    for png in captchas:
        np.testing.assert_array_equal(_ddddocr_preprocess(png), _ddddocr_by_hand(png))


def test_pillow_backend_has_ddddocr_pixels(captchas):
    """Same resize, same gray conversion: the 8-bit pixels are identical."""
    for png in captchas:
        ours, theirs = preprocess(png, Preprocess()), _ddddocr_preprocess(png)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(np.rint(ours * 255), np.rint(theirs * 255))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)  # at most 1 ulp apart


def test_pillow_backend_equals_ddddocr_exactly(captchas):
    for png in captchas:
        np.testing.assert_array_equal(preprocess(png, Preprocess()), _ddddocr_preprocess(png))


# ---------------------------------------------------------------------------- backends


# Mean absolute difference (in [0, 1] units) from Pillow with the same interpolation, on
# captchas: 60 px high, resized to 64 (the model height, an upscale) and to 24 (a downscale).
# OpenCV's INTER_AREA samples like nearest when enlarging and INTER_LINEAR does not
# antialias when shrinking, so those two differ most from Pillow's filters.
BACKEND_TOLERANCE = {
    ("opencv", "bilinear", 64): 0.002,
    ("numpy", "bilinear", 64): 0.002,
    ("opencv", "area", 64): 0.035,
    ("numpy", "area", 64): 0.004,
    ("opencv", "bilinear", 24): 0.05,
    ("numpy", "bilinear", 24): 0.001,
    ("opencv", "area", 24): 0.025,
    ("numpy", "area", 24): 0.03,
}


@pytest.mark.parametrize(("backend", "how", "height"), sorted(BACKEND_TOLERANCE))
def test_backend_close_to_pillow(captchas, backend, how, height):
    tol = BACKEND_TOLERANCE[backend, how, height]
    for png in captchas:
        ref = preprocess(png, Preprocess(interpolation=how, height=height))
        got = preprocess(png, Preprocess(backend=backend, interpolation=how, height=height))
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).mean()) < tol


@pytest.mark.parametrize("height", [24, 64])
def test_numpy_bilinear_within_one_level_of_pillow(captchas, height):
    for png in captchas:
        ref = preprocess(png, Preprocess(interpolation="bilinear", height=height))
        got = preprocess(png, Preprocess(backend="numpy", interpolation="bilinear", height=height))
        assert np.abs(got - ref).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_on_exact_multiples_is_exact(backend):
    # 2x downscale of a 2x2-block image: every backend must pick block values
    values = (np.arange(32 * 20).reshape(32, 20) % 251).astype(np.uint8)
    data = encode(Image.fromarray(np.kron(values, np.ones((2, 2), np.uint8))))
    x = preprocess(data, Preprocess(backend=backend, interpolation="nearest", height=32))
    np.testing.assert_array_equal(np.rint(x[0, 0] * 255), values)


# ---------------------------------------------------------------------------- grayscale order


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_before_or_after_resize(captchas, backend):
    for png in captchas:
        after = preprocess(png, _spec(backend))
        before = preprocess(png, _spec(backend, grayscale="before_resize"))
        assert before.shape == after.shape
        assert float(np.abs(before - after).mean()) < 0.004
    # a gray image gives the same result either way (the conversion is the identity)
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (50, 90), dtype=np.uint8)
    data = encode(Image.fromarray(np.dstack([gray] * 3)))
    after = preprocess(data, _spec(backend))
    before = preprocess(data, _spec(backend, grayscale="before_resize"))
    np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------- formats


@pytest.mark.parametrize("backend", BACKENDS)
def test_rgba_is_composited_on_white(backend):
    rgba = np.zeros((64, 30, 4), np.uint8)  # black everywhere
    rgba[:, 10:20, 3] = 255  # opaque black
    rgba[:, 20:, 3] = 128  # half transparent black
    for data in (encode(Image.fromarray(rgba, "RGBA")), rgba):
        x = preprocess(data, _spec(backend))[0, 0]
        np.testing.assert_allclose(x[:, :10], 1.0)  # fully transparent -> white
        np.testing.assert_allclose(x[:, 10:20], 0.0)
        np.testing.assert_allclose(x[:, 20:], 127 / 255, atol=1.5 / 255)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gray_alpha_is_composited_on_white(backend):
    la = np.zeros((64, 20, 2), np.uint8)
    la[:, 10:, 1] = 255
    x = preprocess(encode(Image.fromarray(la, "LA")), _spec(backend))[0, 0]
    np.testing.assert_allclose(x[:, :10], 1.0)
    np.testing.assert_allclose(x[:, 10:], 0.0)


def _palette_image() -> Image.Image:
    idx = np.zeros((64, 32), np.uint8)
    idx[:, 16:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    return im


@pytest.mark.parametrize("backend", BACKENDS)
def test_palette_png(backend):
    x = preprocess(encode(_palette_image()), _spec(backend))[0, 0]
    np.testing.assert_allclose(x[:, :16], 1.0)
    np.testing.assert_allclose(x[:, 16:], 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_palette_png_with_transparent_index(backend):
    # index 1 (black) is transparent: the whole image becomes white
    x = preprocess(encode(_palette_image(), transparency=1), _spec(backend))
    np.testing.assert_allclose(x, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_16_bit_png_is_scaled_not_clipped(backend):
    arr = np.zeros((64, 30), np.uint16)
    arr[:, 10:20] = 65535
    arr[:, 20:] = 128 * 257
    im = Image.fromarray(arr)
    assert im.mode.startswith("I")
    x = preprocess(encode(im), _spec(backend))[0, 0]
    np.testing.assert_allclose(x[:, :10], 0.0)
    np.testing.assert_allclose(x[:, 10:20], 1.0)
    np.testing.assert_allclose(x[:, 20:], 128 / 255, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cmyk", "expected"), [((0, 0, 0, 0), 1.0), ((0, 0, 0, 255), 0.0)])
def test_cmyk_jpeg(backend, cmyk, expected):
    data = encode(Image.new("CMYK", (32, 64), cmyk), "JPEG", quality=95)
    x = preprocess(data, _spec(backend))
    np.testing.assert_allclose(x, expected, atol=3 / 255)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gif_uses_the_first_frame(backend):
    frames = [Image.new("L", (32, 64), v).convert("P") for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    x = preprocess(buf.getvalue(), _spec(backend))
    np.testing.assert_allclose(x, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pixel_image(backend):
    x = preprocess(encode(Image.new("RGB", (1, 1), (255, 255, 255))), _spec(backend))
    assert x.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(x, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_path_array_and_buffer_inputs_agree(tmp_path, captchas, backend):
    png = captchas[0]
    path = tmp_path / "c.png"
    path.write_bytes(png)
    spec = _spec(backend)
    ref = preprocess(png, spec)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    for image in (bytearray(png), memoryview(png), path, str(path), rgb, rgb[:, ::-1][:, ::-1]):
        np.testing.assert_array_equal(preprocess(image, spec), ref)


def test_gray_and_single_channel_arrays():
    gray = np.full((64, 20), 255, np.uint8)
    np.testing.assert_allclose(preprocess(gray, Preprocess()), 1.0)
    np.testing.assert_allclose(preprocess(gray[:, :, None], Preprocess()), 1.0)


# ---------------------------------------------------------------------------- errors


def _image_error(image, spec: Preprocess | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        preprocess(image, spec or Preprocess(), source="upload.png")
    return info.value


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_bytes(backend):
    err = _image_error(b"", _spec(backend))
    assert err.code == "E_EMPTY"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", [b"hello, I am not an image", b"GIF89a" + b"\x00" * 3, b"\x00"])
def test_garbage_is_a_decode_error(backend, data):
    assert _image_error(data, _spec(backend)).code == "E_DECODE"


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_png_is_a_decode_error(backend):
    rng = np.random.default_rng(0)
    png = encode(Image.fromarray(rng.integers(0, 256, (64, 200, 3), dtype=np.uint8)))
    assert _image_error(png[: len(png) // 2], _spec(backend)).code == "E_DECODE"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_huge_declared_size_is_refused_before_decoding(monkeypatch, backend, pillow_limit):
    if pillow_limit == "disabled":  # an app may switch off Pillow's own bomb check
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(pp, "_decode_pillow", must_not_decode)
    monkeypatch.setattr(pp, "_decode_cv2", must_not_decode)
    data = png_claiming(100_000, 100_000)
    assert len(data) < 100
    err = _image_error(data, _spec(backend))
    assert err.code == "E_TOO_LARGE"


def test_max_pixels_is_the_limit():
    data = encode(Image.new("RGB", (20, 20)))
    err = _image_error(data, Preprocess(max_pixels=399))
    assert err.code == "E_TOO_LARGE"
    assert "20x20" in str(err) and "399" in str(err)
    # the limit also covers the resized tensor: 20x20 becomes 64x64 = 4096 pixels
    with pytest.raises(ImageError, match="would resize to 64x64"):
        preprocess(data, Preprocess(max_pixels=400))
    assert preprocess(data, Preprocess(max_pixels=4096)).shape == (1, 1, 64, 64)


def test_claimed_small_header_decodes():
    # 15x1 pixels: one filter byte + 15 zero bytes, as png_claiming's data holds
    x = preprocess(png_claiming(15, 1), Preprocess())
    assert x.shape == (1, 1, 64, 960)
    np.testing.assert_allclose(x, 0.0)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 10), np.float32),
        np.zeros((10, 10), np.uint16),
        np.zeros((10, 10), bool),
        np.zeros((10, 10, 2), np.uint8),
        np.zeros((10, 10, 3, 1), np.uint8),
        np.zeros((10,), np.uint8),
        np.zeros((0, 10), np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_bad_arrays_are_input_errors(array):
    assert _image_error(array).code == "E_INPUT"


@pytest.mark.parametrize("image", [12345, None, ["png"], {"a": 1}])
def test_unsupported_input_types(image):
    assert _image_error(image).code == "E_INPUT"


def test_missing_file_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "nope.png"
    err = _image_error(path)
    assert err.code == "E_INPUT"
    assert err.source == str(path) and str(path) in str(err)


def test_image_error_fields_and_advice():
    err = _image_error(b"not an image")
    assert err.code == "E_DECODE"
    assert err.retryable is False
    assert err.source == "upload.png"
    msg = str(err)
    assert msg.startswith("E_DECODE: upload.png: ")
    assert msg.endswith(f"({IMAGE_ERRORS['E_DECODE']})")
    for code, advice in IMAGE_ERRORS.items():
        e = ImageError(code, "detail", "src")
        assert (e.code, e.detail, e.source, e.retryable) == (code, "detail", "src", False)
        assert str(e) == f"{code}: src: detail ({advice})"


# ---------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"height": 4}, "height"),
        ({"height": 2000}, "height"),
        ({"width_scale": 0.05}, "width_scale"),
        ({"width_scale": 9}, "width_scale"),
        ({"backend": "numpy"}, "lanczos"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_spec_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"backend": "gpu"}, "backend"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"grayscale": "never"}, "grayscale"),
        ({"channels": 2}, "channels"),
        ({"channel_order": "rbg"}, "channel_order"),
        ({"normalize": "zscore"}, "normalize"),
        ({"max_width": 8}, "max_width"),
        ({"pad_to_width": 9000}, "pad_to_width"),
        ({"normalize": {"scale": 0}}, "scale"),
        ({"normalize": {"mean": [0.1, 0.2]}}, "mean"),
        ({"normalize": {"std": [0.0]}}, "std"),
        ({"normalize": "imagenet"}, "3 per-channel values"),  # with the default 1 channel
    ],
)
def test_contract_rejects_bad_values(kw, match):
    """What pydantic checks in recipes is checked again when a manifest is read alone."""
    with pytest.raises(ValueError, match=match):
        Preprocess(**kw)


# ---------------------------------------------------------------------------- input contract


def test_the_contract_round_trips_through_json():
    import json

    spec = Preprocess(
        backend="numpy",
        interpolation="area",
        channels=3,
        channel_order="bgr",
        normalize="imagenet",
        max_width=200,
        pad_to_width=120,
        pad_value=-1.0,
        width_scale=0.5,
        max_pixels=10_000,
    )
    back = Preprocess(**json.loads(json.dumps(spec.as_dict())))
    assert back == spec and back.norm == PRESETS["imagenet"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bgr_channel_order_swaps_red_and_blue(backend):
    data = encode(Image.new("RGB", (20, 64), (255, 0, 40)))
    rgb = preprocess(data, _spec(backend, channels=3))[0]
    bgr = preprocess(data, _spec(backend, channels=3, channel_order="bgr"))[0]
    np.testing.assert_allclose(rgb[:, 0, 0], [1.0, 0.0, 40 / 255], atol=1e-6)
    np.testing.assert_array_equal(bgr, rgb[::-1])
    gray = preprocess(data, _spec(backend, channel_order="bgr"))  # 1 channel: no effect
    np.testing.assert_array_equal(gray, preprocess(data, _spec(backend)))


def test_normalization_presets_and_custom_values():
    data = _gray(51)  # 0.2 after / 255
    x = preprocess(data, Preprocess(channels=3, normalize="imagenet"))[0, :, 0, 0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x, (0.2 - mean) / std, rtol=1e-5)
    custom = Preprocess(normalize=Normalization(scale=1.0, mean=(100.0,), std=(50.0,)))
    np.testing.assert_allclose(preprocess(data, custom), (51 - 100) / 50, rtol=1e-6)
    from_json = Preprocess(normalize={"scale": 1.0, "mean": [100.0], "std": [50.0]})
    assert from_json == custom
    assert Preprocess(normalize="unit") == Preprocess()
    assert PRESETS["unit"].is_unit and not PRESETS["signed"].is_unit


def test_max_width_squeezes_wide_images():
    wide = encode(Image.new("L", (1000, 64), 255))
    assert preprocess(wide, Preprocess(max_width=300)).shape == (1, 1, 64, 300)
    narrow = encode(Image.new("L", (100, 64), 255))
    assert preprocess(narrow, Preprocess(max_width=300)).shape == (1, 1, 64, 100)


def test_pad_to_width_pads_on_the_right_in_model_space():
    data = encode(Image.new("L", (40, 64), 255))
    spec = Preprocess(normalize="signed", pad_to_width=100, pad_value=-1.0)
    x = preprocess(data, spec)
    assert x.shape == (1, 1, 64, 100) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., :40], 1.0)  # white after [-1, 1] normalization
    np.testing.assert_allclose(x[..., 40:], -1.0)
    wider = encode(Image.new("L", (150, 64), 255))
    assert preprocess(wider, spec).shape == (1, 1, 64, 150)  # never cropped
    fixed = Preprocess(max_width=100, pad_to_width=100)
    for width in (20, 100, 400):  # a fixed-width model gets exactly its width
        assert preprocess(encode(Image.new("L", (width, 64))), fixed).shape[-1] == 100


def test_target_width_rules():
    assert pp.target_width(160, 60, Preprocess()) == 170
    assert pp.target_width(160, 60, Preprocess(width_scale=0.5)) == 85
    assert pp.target_width(10, 200, Preprocess()) == pp.MIN_WIDTH
    assert pp.target_width(1000, 64, Preprocess(max_width=256)) == 256
