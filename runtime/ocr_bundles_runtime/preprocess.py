"""The one image -> tensor function used by evaluation, bench, the runtime and the server.

Imports numpy only at module level; Pillow or OpenCV are imported by the backend that needs them,
so a bundle that preprocesses with Pillow never pays OpenCV's ~30 MB of resident memory.
Every field of `Preprocess` is part of the model's declared input contract (params.yaml
`model.input`); a recipe overrides only what it changes.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .errors import IMAGE_ERRORS, FieldValueError, ImageError

__all__ = [
    "IMAGE_ERRORS",
    "ImageError",
    "Normalization",
    "Preprocess",
    "model_input",
    "pixels_feed",
    "preprocess",
]

Backend = Literal["pillow", "opencv", "numpy"]
Interpolation = Literal["lanczos", "bilinear", "area", "nearest"]
GrayOrder = Literal["after_resize", "before_resize"]
ChannelOrder = Literal["rgb", "bgr"]
Preset = Literal["unit", "signed", "imagenet"]

MIN_WIDTH = 16  # narrower inputs give the CTC head too few steps to emit anything useful


@dataclass(frozen=True)
class Normalization:
    """x = (pixel / scale - mean[c]) / std[c]; one value applies to every channel."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise FieldValueError("normalize.scale", f"must be positive, got {self.scale}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, 3):
                raise FieldValueError(
                    f"normalize.{name}", f"needs 1 or 3 values (one per channel), got {values}"
                )
        if any(s == 0 for s in self.std):
            raise FieldValueError("normalize.std", f"must not contain 0, got {self.std}")

    @property
    def is_unit(self) -> bool:
        return all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)


PRESETS: dict[str, Normalization] = {
    "unit": Normalization(),  # x / 255: ddddocr 1.6
    "signed": Normalization(mean=(0.5,), std=(0.5,)),  # [-1, 1]: ddddocr 1.5, PaddleOCR
    "imagenet": Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model input. Validated by pydantic inside params and recipes."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    backend: Backend = "pillow"  # decoder + resizer: Pillow, OpenCV, or Pillow decode + NumPy
    interpolation: Interpolation = "lanczos"  # ddddocr uses Pillow's Lanczos
    grayscale: GrayOrder = "after_resize"  # ddddocr resizes RGB, then converts to gray
    height: int = 64  # model input height
    channels: Literal[1, 3] = 1
    channel_order: ChannelOrder = "rgb"  # bgr: models trained on OpenCV-decoded images
    # a preset name (unit, signed, imagenet) or {scale, mean, std}
    normalize: Normalization | Preset = field(default_factory=Normalization)
    max_width: int | None = None  # wider images are squeezed to this width (fixed-width models)
    pad_to_width: int | None = None  # narrower tensors are padded on the right to this width
    pad_value: float = 0.0  # the padding's value in the model's input space (after normalize)
    width_scale: float = 1.0  # fewer columns -> fewer CTC steps; keep T >= 2*len+1
    max_pixels: int = 16_000_000  # refuse larger images before decoding (decompression bombs)

    def __post_init__(self) -> None:
        norm = self.normalize
        if isinstance(norm, str):
            if norm not in PRESETS:
                raise FieldValueError(
                    "normalize", f"must be one of {sorted(PRESETS)} or {{scale, mean, std}}"
                )
            object.__setattr__(self, "normalize", PRESETS[norm])
        elif isinstance(norm, dict):  # read back from JSON (manifest, contract.json)
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in norm.items()}
            object.__setattr__(self, "normalize", Normalization(**values))
        self._check()

    def _check(self) -> None:
        # pydantic checks these inside recipes; a manifest read by the runtime alone does not
        # pass through pydantic, and an unknown value would fail only on the first image
        for name, allowed in (
            ("backend", get_args(Backend)),
            ("interpolation", get_args(Interpolation)),
            ("grayscale", get_args(GrayOrder)),
            ("channel_order", get_args(ChannelOrder)),
            ("channels", (1, 3)),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise FieldValueError(name, f"must be one of {list(allowed)}, got {value!r}")
        if not isinstance(self.normalize, Normalization):
            raise FieldValueError("normalize", "must be a preset name or {scale, mean, std}")
        if not 8 <= self.height <= 1024:
            raise FieldValueError("height", f"must be in 8..1024, got {self.height}")
        if not 0.1 <= self.width_scale <= 4.0:
            raise FieldValueError("width_scale", f"must be in 0.1..4.0, got {self.width_scale}")
        if self.backend == "numpy" and self.interpolation == "lanczos":
            raise FieldValueError(
                "interpolation",
                "lanczos is not available with backend numpy; use bilinear, area or nearest",
            )
        if self.max_pixels < 1:
            raise FieldValueError("max_pixels", f"must be positive, got {self.max_pixels}")
        for name in ("max_width", "pad_to_width"):
            value = getattr(self, name)
            if value is not None and not MIN_WIDTH <= value <= 8192:
                raise FieldValueError(name, f"must be in {MIN_WIDTH}..8192 or null, got {value}")
        norm = self.normalize
        assert isinstance(norm, Normalization)
        if self.channels == 1 and (len(norm.mean) == 3 or len(norm.std) == 3):
            raise FieldValueError(
                "normalize", "has 3 per-channel values but channels is 1; give one mean and std"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def norm(self) -> Normalization:
        assert isinstance(self.normalize, Normalization)  # __post_init__ resolved presets
        return self.normalize


ImageInput = bytes | bytearray | memoryview | str | Path | np.ndarray


def preprocess(image: ImageInput, spec: Preprocess, source: str = "image") -> np.ndarray:
    """Decode, convert, resize, normalize and pad one image into a [1, C, H, W] float32 tensor."""
    pixels = load_pixels(image, spec, source)
    if spec.channels == 1 and spec.grayscale == "before_resize":
        pixels = to_gray(pixels, spec.backend)
    h, w = pixels.shape[:2]
    width = checked_width(w, h, spec, source)
    pixels = resize(pixels, width, spec.height, spec)
    if spec.channels == 1 and pixels.ndim == 3:
        pixels = to_gray(pixels, spec.backend)
    if spec.channels == 3 and pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if spec.channels == 3 and spec.channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    return pad(normalize(pixels, spec.norm), spec)


def pixels_feed(image: ImageInput, spec: Preprocess, source: str = "image") -> np.ndarray:
    """Decoded uint8 [H, W, C] pixels (C 1 or 3, alpha composited on white) for a bundle whose
    graph preprocesses (input.feed: pixels); the same refusals as `preprocess`."""
    pixels = load_pixels(image, spec, source)
    checked_width(pixels.shape[1], pixels.shape[0], spec, source)
    return np.ascontiguousarray(pixels[:, :, None] if pixels.ndim == 2 else pixels)


def model_input(
    image: ImageInput, spec: Preprocess, feed: str, source: str = "image"
) -> np.ndarray:
    """What a bundle's model takes (manifest input.feed): the decoded pixels when its graph
    preprocesses, else the [1, C, H, W] tensor made here."""
    if feed == "pixels":
        return pixels_feed(image, spec, source)
    return preprocess(image, spec, source)


def checked_width(w: int, h: int, spec: Preprocess, source: str) -> int:
    """`target_width`, refused when the resized image would exceed `max_pixels`."""
    width = target_width(w, h, spec)
    if width * spec.height > spec.max_pixels:  # a 1e6 x 1 strip is small but resizes huge
        raise ImageError(
            "E_TOO_LARGE",
            f"{w}x{h} would resize to {width}x{spec.height} pixels > limit {spec.max_pixels}",
            source,
        )
    return width


def target_width(w: int, h: int, spec: Preprocess) -> int:
    """Resized width: aspect kept at the model's height (int() truncates, as ddddocr does)."""
    width = max(MIN_WIDTH, int(w * (spec.height / h) * spec.width_scale))
    return min(width, spec.max_width) if spec.max_width else width


def preprocess_all(images: list[Path], spec: Preprocess) -> list[np.ndarray]:
    return [preprocess(p, spec) for p in images]


def normalize(pixels: np.ndarray, norm: Normalization) -> np.ndarray:
    """[1, C, H, W] float32. x / 255 is a division, bit-identical to ddddocr's x / 255.0."""
    x = pixels.astype(np.float32)
    x /= np.float32(norm.scale)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if not norm.is_unit:
        mean = np.asarray(norm.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm.std, np.float32).reshape(-1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x[None], dtype=np.float32)


def pad(x: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Right-pad a [1, C, H, W] tensor to `pad_to_width` with `pad_value`."""
    if spec.pad_to_width is None or x.shape[-1] >= spec.pad_to_width:
        return x
    out = np.full((*x.shape[:-1], spec.pad_to_width), spec.pad_value, np.float32)
    out[..., : x.shape[-1]] = x
    return out


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
        raise ImageError("E_DECODE", _detail(e), source) from e
    if w * h > max_pixels:
        raise ImageError("E_TOO_LARGE", f"{w}x{h} pixels > limit {max_pixels}", source)
    if w < 1 or h < 1:
        raise ImageError("E_DECODE", f"invalid size {w}x{h}", source)


def _decode_pillow(data: bytes, source: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # first frame of a GIF/APNG
            return pil_to_array(im)
    except Exception as e:
        raise ImageError("E_DECODE", _detail(e), source) from e


def pil_to_array(im: Any) -> np.ndarray:
    """A Pillow image as the uint8 pixels the runtime takes (16-bit and 32-bit gray scaled to
    8 bits); the facade and any app holding PIL images use it."""
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
    x = pixels.astype(np.float32).reshape(h, w, -1)
    x = _filtered(x, *_axis_taps(h, height, how))
    x = _filtered(x.transpose(1, 0, 2), *_axis_taps(w, width, how)).transpose(1, 0, 2)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out[:, :, 0] if pixels.ndim == 2 else out


def _filtered(x: np.ndarray, idx: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Axis 0 of `x` resampled: out[j] = sum over taps t of wts[j, t] * x[idx[j, t]], one tap
    at a time, so memory stays at the output's size."""
    out = np.zeros((idx.shape[0], *x.shape[1:]), np.float32)
    for t in range(idx.shape[1]):
        out += wts[:, t, None, None] * x[idx[:, t]]
    return out


def _axis_taps(src: int, dst: int, how: Interpolation) -> tuple[np.ndarray, np.ndarray]:
    """Per output index, the source indices its filter reads and their weights (dst x taps):
    bilinear (triangle, widened when shrinking) or area (box). A band, not a dst x src matrix:
    a 5000 x 2 strip resized to height 64 would need 6 GB as a matrix."""
    scale = src / dst
    centers = (np.arange(dst) + 0.5) * scale
    support = max(scale, 1.0)
    reach = support / 2 if how == "area" else support  # farthest center-to-pixel distance read
    first = np.floor(centers - reach - 0.5).astype(np.intp)
    idx = first[:, None] + np.arange(int(np.ceil(2 * reach)) + 2)
    inside = (idx >= 0) & (idx < src)
    dist = np.where(inside, np.abs(idx + 0.5 - centers[:, None]) / support, np.inf)
    if how == "area":
        wts = (dist <= 0.5).astype(np.float32)
        wts[np.arange(dst), dist.argmin(axis=1)] = 1.0  # never an empty row
    else:
        wts = np.clip(1.0 - dist, 0.0, None).astype(np.float32)
    return np.clip(idx, 0, src - 1), wts / wts.sum(axis=1, keepdims=True)


def _detail(e: Exception) -> str:
    """The decoder's complaint without object addresses (Pillow quotes `<BytesIO at 0x...>`),
    so the same bad file always gives the same message."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")
