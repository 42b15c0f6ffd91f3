"""The one image -> tensor function used by evaluation, bench and the runtime.

Imports numpy only at module level; Pillow or OpenCV are imported by the backend that needs them,
so a bundle that preprocesses with Pillow never pays OpenCV's ~30 MB of resident memory.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import FieldValueError

Backend = Literal["pillow", "opencv", "numpy"]
Interpolation = Literal["lanczos", "bilinear", "area", "nearest"]
Normalize = Literal["unit", "signed"]
GrayOrder = Literal["after_resize", "before_resize"]

MIN_WIDTH = 16  # narrower inputs give the CTC head too few steps to emit anything useful


# Stable error codes an app can switch on, with the advice shown to its developer.
IMAGE_ERRORS: dict[str, str] = {
    "E_EMPTY": "the image is empty; send the image file's bytes",
    "E_DECODE": "not a decodable PNG/JPEG/GIF/BMP/WebP image; check the file or upload",
    "E_TOO_LARGE": "image exceeds the pixel limit; crop or downscale before sending",
    "E_INPUT": "pass bytes, a file path or a HxW / HxWxC uint8 NumPy array",
}


class ImageError(Exception):
    """An image could not be decoded or preprocessed; `code` is stable, `retryable` advises."""

    def __init__(self, code: str, detail: str, source: str = "image") -> None:
        self.code, self.detail, self.source = code, detail, source
        self.retryable = False  # the same input fails the same way; only a new image helps
        super().__init__(f"{code}: {source}: {detail} ({IMAGE_ERRORS[code]})")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model input. Validated by pydantic inside recipes."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    backend: Backend = "pillow"  # decoder + resizer: Pillow, OpenCV, or Pillow decode + NumPy
    interpolation: Interpolation = "lanczos"  # ddddocr uses Pillow's Lanczos
    normalize: Normalize = "unit"  # unit: x/255 (ddddocr 1.6); signed: (x/255-0.5)/0.5 (1.5)
    grayscale: GrayOrder = "after_resize"  # ddddocr resizes RGB, then converts to gray
    height: int = 64  # model input height
    channels: Literal[1, 3] = 1
    width_scale: float = 1.0  # fewer columns -> fewer CTC steps; keep T >= 2*len+1
    max_pixels: int = 16_000_000  # refuse larger images before decoding (decompression bombs)

    def __post_init__(self) -> None:
        if not 8 <= self.height <= 1024:
            raise FieldValueError("height", f"must be in 8..1024, got {self.height}")
        if not 0.1 <= self.width_scale <= 4.0:
            raise FieldValueError("width_scale", f"must be in 0.1..4.0, got {self.width_scale}")
        if self.backend == "numpy" and self.interpolation == "lanczos":
            raise ValueError(
                "backend 'numpy' supports interpolation bilinear, area or nearest, got 'lanczos'"
            )
        if self.max_pixels < 1:
            raise FieldValueError("max_pixels", f"must be positive, got {self.max_pixels}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ImageInput = bytes | bytearray | memoryview | str | Path | np.ndarray


def preprocess(image: ImageInput, spec: Preprocess, source: str = "image") -> np.ndarray:
    """Decode, convert, resize and normalize one image into a [1, C, H, W] float32 tensor."""
    pixels = load_pixels(image, spec, source)
    if spec.channels == 1 and spec.grayscale == "before_resize":
        pixels = to_gray(pixels, spec.backend)
    h, w = pixels.shape[:2]
    width = max(MIN_WIDTH, int(w * (spec.height / h) * spec.width_scale))
    if width * spec.height > spec.max_pixels:  # a 1e6 x 1 strip is small but resizes huge
        raise ImageError(
            "E_TOO_LARGE",
            f"{w}x{h} would resize to {width}x{spec.height} pixels > limit {spec.max_pixels}",
            source,
        )
    pixels = resize(pixels, width, spec.height, spec)
    if spec.channels == 1 and pixels.ndim == 3:
        pixels = to_gray(pixels, spec.backend)
    if spec.channels == 3 and pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return normalize(pixels, spec.normalize)


def preprocess_all(images: list[Path], spec: Preprocess) -> list[np.ndarray]:
    return [preprocess(p, spec) for p in images]


def normalize(pixels: np.ndarray, mode: Normalize) -> np.ndarray:
    x = pixels.astype(np.float32)
    x /= np.float32(255)  # a division, bit-identical to ddddocr's x / 255.0
    if mode == "signed":
        x -= np.float32(0.5)
        x *= np.float32(2.0)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def load_pixels(image: ImageInput, spec: Preprocess, source: str) -> np.ndarray:
    """HxW or HxWx3 uint8 (RGB) from bytes, a path or an array; alpha is composited on white."""
    if isinstance(image, np.ndarray):
        arr = _from_array(image, source)
        if arr.shape[0] * arr.shape[1] > spec.max_pixels:
            raise ImageError(
                "E_TOO_LARGE",
                f"{arr.shape[1]}x{arr.shape[0]} pixels > limit {spec.max_pixels}",
                source,
            )
        return arr
    if isinstance(image, str | Path):
        source = str(image)
        try:
            image = Path(image).read_bytes()
        except OSError as e:
            raise ImageError("E_INPUT", f"cannot read file: {e.strerror}", source) from e
    if not isinstance(image, bytes | bytearray | memoryview):
        raise ImageError("E_INPUT", f"unsupported input type {type(image).__name__}", source)
    data = bytes(image)
    if not data:
        raise ImageError("E_EMPTY", "0 bytes", source)
    _check_size(data, spec.max_pixels, source)
    if spec.backend == "opencv":
        return _decode_cv2(data, source)
    return _decode_pillow(data, source)


def _check_size(data: bytes, max_pixels: int, source: str) -> None:
    """Read only the header, so a decompression bomb is refused before any pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise ImageError("E_TOO_LARGE", str(e), source) from e
    except Exception as e:  # Pillow raises many types for garbage input
        raise ImageError("E_DECODE", f"{type(e).__name__}: {e}", source) from e
    if w * h > max_pixels:
        raise ImageError("E_TOO_LARGE", f"{w}x{h} pixels > limit {max_pixels}", source)
    if w < 1 or h < 1:
        raise ImageError("E_DECODE", f"invalid size {w}x{h}", source)


def _decode_pillow(data: bytes, source: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # first frame of a GIF/APNG
            return _pil_to_array(im)
    except Exception as e:
        raise ImageError("E_DECODE", f"{type(e).__name__}: {e}", source) from e


def _pil_to_array(im: Any) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return _composite_white(np.asarray(im.convert("RGBA")))
    if im.mode == "L":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.rint(rgb).astype(np.uint8)


def _decode_cv2(data: bytes, source: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError("E_DECODE", "OpenCV could not decode the bytes", source)
    if arr.dtype == np.uint16:
        arr = np.rint(arr / 257.0).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return _composite_white(cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA))
    if arr.ndim == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return arr


def _from_array(arr: np.ndarray, source: str) -> np.ndarray:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape or arr.size == 0:
        raise ImageError("E_INPUT", f"array {arr.dtype} {arr.shape}", source)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        return _composite_white(arr)
    return arr


def to_gray(pixels: np.ndarray, backend: Backend) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's 'L' mode and OpenCV's BGR2GRAY compute it."""
    if pixels.ndim == 2:
        return pixels
    if backend == "pillow":
        from PIL import Image

        return np.asarray(Image.fromarray(pixels).convert("L"))
    if backend == "opencv":
        import cv2

        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def resize(pixels: np.ndarray, width: int, height: int, spec: Preprocess) -> np.ndarray:
    if pixels.shape[0] == height and pixels.shape[1] == width:
        return pixels
    if spec.backend == "pillow":
        return _resize_pillow(pixels, width, height, spec.interpolation)
    if spec.backend == "opencv":
        return _resize_cv2(pixels, width, height, spec.interpolation)
    return _resize_numpy(pixels, width, height, spec.interpolation)


def _resize_pillow(pixels: np.ndarray, width: int, height: int, how: Interpolation) -> np.ndarray:
    from PIL import Image

    method = {
        "lanczos": Image.Resampling.LANCZOS,
        "bilinear": Image.Resampling.BILINEAR,
        "area": Image.Resampling.BOX,
        "nearest": Image.Resampling.NEAREST,
    }[how]
    return np.asarray(Image.fromarray(pixels).resize((width, height), method))


def _resize_cv2(pixels: np.ndarray, width: int, height: int, how: Interpolation) -> np.ndarray:
    import cv2

    method = {
        "lanczos": cv2.INTER_LANCZOS4,
        "bilinear": cv2.INTER_LINEAR,
        "area": cv2.INTER_AREA,
        "nearest": cv2.INTER_NEAREST,
    }[how]
    return cv2.resize(pixels, (width, height), interpolation=method)


def _resize_numpy(pixels: np.ndarray, width: int, height: int, how: Interpolation) -> np.ndarray:
    h, w = pixels.shape[:2]
    if how == "nearest":
        rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.intp)
        cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.intp)
        return pixels[rows[:, None], cols]
    x = pixels.astype(np.float32)
    x = _axis_weights(h, height, how) @ x.reshape(h, -1)
    x = x.reshape(height, w, -1).transpose(1, 0, 2).reshape(w, -1)
    x = (_axis_weights(w, width, how) @ x).reshape(width, height, -1).transpose(1, 0, 2)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out[:, :, 0] if pixels.ndim == 2 else out


def _axis_weights(src: int, dst: int, how: Interpolation) -> np.ndarray:
    """A dst x src matrix: bilinear (triangle, widened when shrinking) or area (box) filter."""
    scale = src / dst
    centers = (np.arange(dst) + 0.5) * scale
    pos = np.arange(src) + 0.5
    support = max(scale, 1.0)
    dist = np.abs(pos[None, :] - centers[:, None]) / support
    if how == "area":
        wts = (dist <= 0.5).astype(np.float32)
        wts[np.arange(dst), np.abs(dist).argmin(axis=1)] = 1.0  # never an empty row
    else:
        wts = np.clip(1.0 - dist, 0.0, None).astype(np.float32)
    return wts / wts.sum(axis=1, keepdims=True)
