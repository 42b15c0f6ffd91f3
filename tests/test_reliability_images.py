"""Odd and hostile images through preprocess and Recognizer.predict: recognized, or refused with
an ImageError and its stable code; never another exception."""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import time
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
from builders import TINY_INPUT as PRE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_runtime import make_bundle

from ocr_bundles_runtime import Recognizer, Result
from ocr_bundles_runtime.preprocess import IMAGE_ERRORS, ImageError, Preprocess, preprocess
from ocr_bundles_runtime.recognizer import Status

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "pillow": Preprocess(),
    "opencv": Preprocess(backend="opencv", interpolation="area", grayscale="before_resize"),
    "numpy": Preprocess(backend="numpy", interpolation="area", grayscale="before_resize"),
    "bundle": PRE,
}
RNG = np.random.default_rng(7)
RGB = Image.fromarray(RNG.integers(0, 256, (16, 40, 3), dtype=np.uint8))


def encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for width x height gray pixels, followed by almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("L", (40, 16), v).convert("P") for v in (0, 128, 255)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def palette(transparent: bool) -> bytes:
    im = RGB.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", **({"transparency": 0} if transparent else {}))


PNG, JPEG = encode(RGB, "PNG"), encode(RGB, "JPEG", quality=90)
GRAY16 = Image.fromarray(RNG.integers(0, 65536, (16, 40)).astype(np.uint16))
OK = "ok"
# name -> (bytes, expected: "ok" or an ImageError code)
CASES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "E_EMPTY"),
    "truncated_png": (PNG[: len(PNG) // 2], "E_DECODE"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], "E_DECODE"),
    "png_header_only": (PNG[:33], "E_DECODE"),
    "bomb_50000x50000": (png_claiming(50_000, 50_000), "E_TOO_LARGE"),
    "over_limit_5000x5000": (png_claiming(5000, 5000), "E_TOO_LARGE"),
    "text_file": (b"user,password\nalice,hunter2\n" * 4, "E_DECODE"),
    "html": (b"<!doctype html><html><body>404</body></html>", "E_DECODE"),
    "1x1": (encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), OK),
    "rgb_png": (PNG, OK),
    "rgb_jpeg": (JPEG, OK),
    "rgba": (encode(RGB.convert("RGBA"), "PNG"), OK),
    "gray_alpha": (encode(RGB.convert("LA"), "PNG"), OK),
    "palette": (palette(False), OK),
    "palette_transparent": (palette(True), OK),
    "gray16_png": (encode(GRAY16, "PNG"), OK),
    "cmyk_jpeg": (encode(RGB.convert("CMYK"), "JPEG"), OK),
    "gray_jpeg": (encode(RGB.convert("L"), "JPEG"), OK),
    "gif": (encode(RGB.convert("P"), "GIF"), OK),
    "animated_gif": (animated_gif(), OK),
    "bmp": (encode(RGB, "BMP"), OK),
    "webp": (encode(RGB, "WEBP", quality=90), OK),
    "webp_lossless_rgba": (encode(RGB.convert("RGBA"), "WEBP", lossless=True), OK),
    "tiff": (encode(RGB, "TIFF"), OK),
}


def outcome(fn, data: bytes) -> tuple[str, object]:
    try:
        return OK, fn(data)
    except ImageError as e:
        assert e.code in IMAGE_ERRORS and not e.retryable and str(e).startswith(e.code)
        return e.code, e


def check_tensor(x: np.ndarray, spec: Preprocess) -> None:
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[:3] == (1, spec.channels, spec.height)
    assert x.shape[3] >= 16 and np.isfinite(x).all() and 0.0 <= x.min() <= x.max() <= 1.0


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory) -> Recognizer:
    return Recognizer.from_bundle(make_bundle(tmp_path_factory.mktemp("img")))


@pytest.mark.parametrize("backend", list(SPECS))
@pytest.mark.parametrize("case", list(CASES))
def test_preprocess_case(case: str, backend: str):
    data, expected = CASES[case]
    spec = SPECS[backend]
    t0 = time.perf_counter()
    got, value = outcome(lambda d: preprocess(d, spec), data)
    assert got == expected, value
    if got == "E_TOO_LARGE":  # refused from the header, before any pixel is decoded
        assert time.perf_counter() - t0 < 0.5
    if got == OK:
        check_tensor(value, spec)


@pytest.mark.parametrize("case", list(CASES))
def test_predict_case(recognizer: Recognizer, case: str):
    data, expected = CASES[case]
    got, value = outcome(recognizer.predict, data)
    assert got == expected, value
    if got == OK:
        assert isinstance(value, Result) and isinstance(value.text, str)
        assert value.status in ("ok", "low_confidence_fallback", "needs_server")
        assert 0.0 <= value.confidence <= 1.0


NOT_IMAGES = {
    "missing_path": lambda tmp: tmp / "absent.png",
    "directory": lambda tmp: tmp,
    "str_path": lambda tmp: str(tmp / "absent.png"),
    "int": lambda tmp: 42,
    "none": lambda tmp: None,
    "float_array": lambda tmp: np.zeros((16, 40), np.float32),
    "empty_array": lambda tmp: np.zeros((0, 40), np.uint8),
    "two_channels": lambda tmp: np.zeros((16, 40, 2), np.uint8),
    "4d_array": lambda tmp: np.zeros((1, 16, 40, 3), np.uint8),
}


@pytest.mark.parametrize("case", list(NOT_IMAGES))
def test_unusable_inputs_are_e_input(recognizer: Recognizer, tmp_path: Path, case: str):
    value = NOT_IMAGES[case](tmp_path)
    for fn in (lambda v: preprocess(v, PRE), recognizer.predict):
        with pytest.raises(ImageError) as info:
            fn(value)
        assert info.value.code == "E_INPUT"


def flat(value: int | tuple[int, ...], fmt: str, mode: str = "L") -> bytes:
    return encode(Image.new(mode, (40, 16), value), fmt)


@pytest.mark.parametrize("backend", list(SPECS))
@pytest.mark.parametrize(
    ("data", "gray"),
    [
        (encode(Image.new("RGBA", (40, 16), (0, 0, 0, 0)), "PNG"), 1.0),  # transparent -> white
        (encode(Image.new("LA", (40, 16), (0, 0)), "PNG"), 1.0),
        (encode(Image.new("P", (40, 16), 0), "PNG", transparency=0), 1.0),
        (encode(Image.new("I;16", (40, 16), 65535), "PNG"), 1.0),
        (encode(Image.new("I;16", (40, 16), 257 * 128), "PNG"), 128 / 255),
        (encode(Image.new("I;16", (40, 16), 200), "PNG"), 1 / 255),  # dark 16-bit stays dark
        (flat((255, 255, 255, 255), "JPEG", "CMYK"), 0.0),  # full ink -> black
        (flat(128, "GIF"), 128 / 255),
        (flat(200, "BMP"), 200 / 255),
    ],
    ids=[
        "rgba",
        "la",
        "p_transparent",
        "gray16_max",
        "gray16_mid",
        "gray16_dark",
        "cmyk",
        "gif",
        "bmp",
    ],
)
def test_formats_decode_to_the_right_gray(backend: str, data: bytes, gray: float):
    x = preprocess(data, SPECS[backend])
    assert abs(float(x.mean()) - gray) < 0.02


@pytest.mark.parametrize("backend", ["pillow", "opencv", "numpy"])
@pytest.mark.parametrize("interpolation", ["area", "bilinear"])
def test_a_long_strip_within_the_limit_resizes_in_little_memory(
    tmp_path: Path, backend: str, interpolation: str
):
    """5000x2 resizes to 160000x64, inside max_pixels. The numpy backend's filters once were
    dense 160000x5000 matrices (6 GB; a fuzzed image took a test worker down by OOM): they must
    fit the 3 GiB address space the subprocess gets."""
    (tmp_path / "strip.png").write_bytes(encode(Image.new("RGB", (5000, 2), (200, 9, 9)), "PNG"))
    spec = dataclasses.replace(SPECS[backend], interpolation=interpolation)
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED.format(spec=spec.as_dict()), str(tmp_path / "strip.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split() == ["ok", str(64 * 160_000)], proc.stdout


LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from ocr_bundles_runtime.preprocess import ImageError, Preprocess, preprocess
try:
    x = preprocess(sys.argv[1], Preprocess(**{spec!r}))
    print("ok", x.size)
except ImageError as e:
    print(e.code)
"""


@pytest.mark.parametrize("backend", ["pillow", "opencv", "numpy"])
def test_extreme_aspect_ratio_is_refused(tmp_path: Path, backend: str):
    """Run under a 3 GiB address-space limit so the failure cannot take the machine down."""
    (tmp_path / "wide.png").write_bytes(encode(Image.new("L", (1_000_000, 1), 200), "PNG"))
    spec = SPECS[backend]
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED.format(spec=spec.as_dict()), str(tmp_path / "wide.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split()[0] in ("E_TOO_LARGE", "ok"), proc.stdout
    if proc.stdout.startswith("ok"):
        assert int(proc.stdout.split()[1]) <= spec.max_pixels


# ------------------------------------------------------------------ fuzzing

SEEDS = [CASES[name][0] for name in ("rgb_png", "rgb_jpeg", "gif", "bmp", "webp", "gray16_png")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid image with bit flips, overwritten header bytes, a cut, or a re-CRC'd PNG IHDR."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.sampled_from(["flips", "header", "truncate", "ihdr", "mixed"]))
    if kind in ("flips", "mixed"):
        for pos in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=8)):
            data[pos // 8] ^= 1 << (pos % 8)
    if kind in ("header", "mixed"):
        start = draw(st.integers(0, min(64, len(data) - 1)))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[start : start + len(patch)] = patch
    if kind == "ihdr":  # PNG with a consistent IHDR CRC, so Pillow trusts the edited header
        data = bytearray(SEEDS[0])
        height = draw(st.integers(0, 200))
        width = draw(st.integers(0, 40 * (height + 1)))
        depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3]))
        color = draw(st.sampled_from([0, 2, 3, 4, 6, 1]))
        body = struct.pack(
            ">IIBBBBB", width, height, depth, color, 0, 0, draw(st.sampled_from([0, 1]))
        )
        data[8:33] = chunk(b"IHDR", body)
    if kind in ("truncate", "mixed"):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


NO_BOMB_WARNING = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def only_image_errors(fn, data: bytes):
    """fn's result, or None when it refused the bytes with a named image error and a message;
    anything else (a crash, a bare exception) fails the test."""
    try:
        return fn(data)
    except ImageError as e:
        assert e.code in IMAGE_ERRORS and str(e).strip(), (e.code, str(e))
        return None


@NO_BOMB_WARNING
@pytest.mark.parametrize("backend", list(SPECS))
@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), mutated()))
def test_fuzz_preprocess(backend: str, data: bytes):
    spec = SPECS[backend]
    x = only_image_errors(lambda d: preprocess(d, spec), data)
    if x is not None:  # accepted bytes give the model's input, never garbage
        assert x.dtype == np.float32 and x.ndim == 4
        assert x.shape[:3] == (1, spec.channels, spec.height) and x.shape[3] >= 1
        assert np.isfinite(x).all() and x.min() >= -3.0 and x.max() <= 3.0


@NO_BOMB_WARNING
@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), mutated()))
def test_fuzz_predict(recognizer: Recognizer, data: bytes):
    result = only_image_errors(recognizer.predict, data)
    if result is not None:  # a read: a text of the charset, a probability, a known status
        assert isinstance(result, Result) and isinstance(result.text, str)
        assert set(result.text) <= set("".join(recognizer.spec.charset))
        assert 0.0 <= result.confidence <= 1.0
        assert result.status in typing.get_args(Status)
