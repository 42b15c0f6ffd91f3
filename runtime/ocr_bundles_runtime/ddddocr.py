"""ddddocr's API over a bundle, so an existing ddddocr user switches with a one-line change:

    # before: import ddddocr; ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    from ocr_bundles_runtime.ddddocr import DdddOcr
    ocr = DdddOcr(bundle="bundles/low", show_ad=False)

    ocr.classification(open("captcha.png", "rb").read())                 # "x7kq2"
    ocr.classification(img_bytes, probability=True)  # {text, probabilities, charset, confidence}
    ocr.set_ranges("0123456789")                     # or a preset 0..7, or a list of classes

Matches ddddocr 1.6.1 (compat.v1.DdddOcr, core.ocr_engine.OCREngine):
- images: bytes, a str (an existing file path, else base64), a pathlib path, a PIL Image or a
  uint8 NumPy array;
- `classification` returns a str; with `probability=True` a dict: `text`, `probabilities` (the
  softmax over the last axis of the model's raw output, in the output's own shape: [T][1][C]
  for a TBC model), `charset` (the bundle's, index = class) and `confidence` (the mean over
  steps of the best class's probability), by ddddocr's float32 arithmetic. A bundle whose output
  kind is "probabilities" already ends in a Softmax: its output is used as it is;
- `set_ranges` drops the decoded characters outside the range, as 1.6.1 does (after the CTC
  decode, not by masking classes); the probabilities stay over the whole charset, as in 1.6.1.

Differences, on purpose:
- `classification` text is `Recognizer.predict(...).text`: the bundle's measured behaviour,
  fallback model included; `probability=True` describes the model every call starts with
  (`Recognizer.first_read`), since only a model's raw output has per-step probabilities;
- the text is stripped when the bundle's scoring strips (manifest scoring.strip); ddddocr never
  strips;
- alpha is always composited on white (the runtime's rule), which is ddddocr's `png_fix=True`
  for RGBA images; ddddocr without png_fix reads transparent pixels as black;
- palette images (GIF, mode P) are resized as RGB by the bundle's filter; ddddocr's Pillow call
  resizes them with nearest neighbour;
- `set_ranges(int)` uses the presets ddddocr's README documents (0 digits .. 7 everything but
  letters and digits); ddddocr 1.6.1's code instead keeps the first n + 1 classes of its charset
  (set_ranges(0) keeps only the blank, so every text is empty);
- `show_ad`, `old` and `beta` are accepted and ignored (the bundle is the model; nothing is
  printed). Detection, slides, color filters and custom models are refused with what to use.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .decode import greedy_path, to_time_major
from .errors import ImageError
from .manifest import PublicKey
from .preprocess import ImageInput, pil_to_array
from .recognizer import Recognizer

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
# ddddocr's documented set_ranges presets; 7 is the charset minus letters and digits
PRESETS = {
    0: _DIGITS,
    1: _LOWER,
    2: _UPPER,
    3: _LOWER + _UPPER,
    4: _LOWER + _DIGITS,
    5: _UPPER + _DIGITS,
    6: _LOWER + _UPPER + _DIGITS,
}
_NOT_HERE = "ocr_bundles_runtime recognizes text only; keep ddddocr.DdddOcr for {what}"


class DdddOcr:
    """ddddocr.DdddOcr's text recognition over a bundle (thread-safe as Recognizer is, until
    `set_ranges` or `switch_device` is called)."""

    def __init__(
        self,
        bundle: str | os.PathLike[str] | None = None,
        *,
        files: Mapping[str, bytes] | None = None,
        archive: bytes | None = None,
        providers: Sequence[str] | None = None,
        public_key: PublicKey | None = None,
        ocr: bool = True,
        det: bool = False,
        old: bool = False,
        beta: bool = False,
        use_gpu: bool = False,
        device_id: int = 0,
        show_ad: bool = True,
        import_onnx_path: str = "",
        charsets_path: str = "",
    ) -> None:
        """Load the bundle: a folder (`bundle`), its files as bytes (`files`) or a zip archive's
        bytes (`archive`), exactly one. providers/public_key: as Recognizer.from_bundle.
        The other arguments are ddddocr's, so an existing call keeps working; old, beta and
        show_ad are ignored, and those a bundle cannot honour raise ValueError."""
        _refuse_unsupported(ocr, det, import_onnx_path, charsets_path, device_id)
        self._load = _loader(bundle, files, archive, public_key)
        self._providers = tuple(providers) if providers else None
        self.use_gpu, self.device_id = use_gpu, device_id
        self._recognizer = self._load(_providers(use_gpu, self._providers))
        self._allowed: frozenset[str] | None = None  # set_ranges: the classes kept

    @property
    def recognizer(self) -> Recognizer:
        """The runtime underneath: events, check(), predict() with confidence and status."""
        return self._recognizer

    def classification(
        self,
        img: Any,
        png_fix: bool = False,
        probability: bool = False,
        color_filter_colors: list[str] | None = None,
        color_filter_custom_ranges: list[Any] | None = None,
    ) -> str | dict[str, Any]:
        """The text of `img` (bytes, base64 or path str, pathlib path, PIL Image, uint8
        array), or with `probability` ddddocr's dict. png_fix is accepted: alpha is always
        composited on white. A bad image raises the runtime's ImageError."""
        del png_fix  # what it asks for is always done (module docstring)
        if color_filter_colors is not None or color_filter_custom_ranges is not None:
            raise ValueError(
                "color_filter_colors / color_filter_custom_ranges need OpenCV, which the runtime "
                "does not use; filter the image first (ddddocr.preprocessing.color_filter."
                "ColorFilter(...).filter_image) and pass the filtered image"
            )
        image = image_input(img)
        if probability:
            return self._probabilities(image)
        return self._finish(self._keep(self._recognizer.predict(image).text))

    def set_ranges(self, charset_range: int | str | list[str]) -> None:
        """Keep only these classes in the text: a preset 0..7 (PRESETS), the characters of a
        str, or a list of class strings. ValueError when none of them is in the bundle."""
        wanted = self._range_classes(charset_range)
        kept = wanted & set(self._recognizer.spec.charset)
        if not kept:
            raise ValueError(
                f"set_ranges({charset_range!r}): none of these characters is in the bundle's "
                f"charset ({len(self._recognizer.spec.charset)} classes); every text would be "
                "empty. Choose characters the bundle reads (get_charset())"
            )
        missing = sorted(wanted - kept)
        if missing:
            log.info("set_ranges: the bundle has no class for %s; ignored", "".join(missing))
        self._allowed = frozenset(kept | {""})  # ddddocr adds the blank ("") to every range

    def get_charset(self) -> list[str]:
        """The bundle's classes, index = class (ddddocr's get_charset)."""
        return list(self._recognizer.spec.charset)

    def switch_device(self, use_gpu: bool, device_id: int = 0) -> None:
        """Reload the bundle on the GPU (CUDA, falling back to CPU) or on the CPU."""
        _refuse_unsupported(True, False, "", "", device_id)
        self._recognizer = self._load(_providers(use_gpu, self._providers))
        self.use_gpu, self.device_id = use_gpu, device_id

    def get_model_info(self) -> dict[str, Any]:
        """ddddocr's top-level keys; `ocr_model` describes the bundle's model."""
        rec = self._recognizer
        model = {
            "bundle": rec.spec.where,
            "file": rec.model_file,
            "providers": list(rec.providers),
            "classes": len(rec.spec.charset),
            "events": rec.events,
        }
        return {
            "ocr_enabled": True,
            "det_enabled": False,
            "use_gpu": self.use_gpu,
            "device_id": self.device_id,
            "ocr_model": model,
        }

    def detection(self, img: Any) -> list[list[int]]:
        raise NotImplementedError(_NOT_HERE.format(what="detection: DdddOcr(det=True)"))

    def slide_match(
        self, target_img: Any, background_img: Any, simple_target: bool = False
    ) -> dict[str, Any]:
        raise NotImplementedError(_NOT_HERE.format(what="slide_match (OpenCV, no model)"))

    def slide_comparison(self, target_img: Any, background_img: Any) -> dict[str, Any]:
        raise NotImplementedError(_NOT_HERE.format(what="slide_comparison (OpenCV, no model)"))

    def _probabilities(self, image: ImageInput) -> dict[str, Any]:
        """ddddocr's probability dict from the raw output of the model every call starts with."""
        spec = self._recognizer.spec
        _, out = self._recognizer.first_read(image)
        out = np.asarray(out, dtype=np.float32)
        probs = out if spec.kind == "probabilities" else softmax(out)
        classes, _ = greedy_path(to_time_major(out, spec.layout), spec.blank)
        decoded = "".join(spec.charset[i] for i in classes.tolist())
        return {
            "text": self._finish(self._keep(decoded)),
            "probabilities": probs.tolist(),
            "charset": list(spec.charset),
            "confidence": float(np.mean(np.max(probs, axis=-1))),
        }

    def _keep(self, text: str) -> str:
        """`text` without the classes outside set_ranges' range (ddddocr drops them after the
        CTC decode). Text is split back into classes by longest match, so a class of several
        characters (ddddocr's "''") stays one class."""
        if self._allowed is None:
            return text
        tokens = split_classes(text, self._recognizer.spec.charset)
        return "".join(t for t in tokens if t in self._allowed)

    def _finish(self, text: str) -> str:
        # after the range filter too: a dropped class may leave whitespace at an end
        return text.strip() if self._recognizer.spec.strip else text

    def _range_classes(self, charset_range: int | str | list[str]) -> set[str]:
        if isinstance(charset_range, bool) or not isinstance(charset_range, int | str | list):
            raise TypeError(
                f"set_ranges takes an int preset, a str or a list of str, "
                f"not {type(charset_range).__name__}"
            )
        if isinstance(charset_range, int):
            return self._preset(charset_range)
        if not charset_range or not all(isinstance(c, str) and c for c in charset_range):
            raise ValueError("set_ranges: give at least one character (non-empty strings)")
        return set(charset_range)

    def _preset(self, number: int) -> set[str]:
        if number == 7:
            return set(self._recognizer.spec.charset) - set(PRESETS[6]) - {""}
        if number not in PRESETS:
            raise ValueError(
                f"set_ranges({number}): presets are 0 digits, 1 a-z, 2 A-Z, 3 a-zA-Z, "
                "4 a-z0-9, 5 A-Z0-9, 6 a-zA-Z0-9, 7 all but letters and digits; or pass a str"
            )
        return set(PRESETS[number])


def softmax(x: np.ndarray) -> np.ndarray:
    """ddddocr's OCREngine._softmax over the class axis, the same float32 operations."""
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def split_classes(text: str, charset: list[str]) -> list[str]:
    """`text` as the classes it was decoded from (longest class first); a character that is no
    class (a server's answer) is its own token."""
    longest = max((len(c) for c in charset), default=1)
    classes = set(charset)
    tokens: list[str] = []
    i = 0
    while i < len(text):
        size = next(
            (n for n in range(min(longest, len(text) - i), 1, -1) if text[i : i + n] in classes),
            1,
        )
        tokens.append(text[i : i + size])
        i += size
    return tokens


def image_input(img: Any) -> ImageInput:
    """What the runtime takes for what ddddocr takes: a str is a file path when the file exists,
    else base64 (ddddocr's order); a PIL Image becomes its pixels; other types pass through
    (the runtime refuses what it cannot read with ImageError E_INPUT)."""
    if isinstance(img, str):
        return Path(img) if os.path.exists(img) else _from_base64(img)
    if isinstance(img, PurePath):
        return Path(img)
    if _is_pil_image(img):
        return pil_to_array(img)  # the same modes rule as decoded bytes: alpha on white
    return img


def _from_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text)  # not strict, as ddddocr's base64_to_image
    except (binascii.Error, ValueError) as e:
        raise ImageError(
            "E_INPUT", f"a str is neither an existing file nor base64 image data ({e})", "str"
        ) from e


def _is_pil_image(img: Any) -> bool:
    from PIL import Image

    return isinstance(img, Image.Image)


def _refuse_unsupported(
    ocr: bool, det: bool, import_onnx_path: str, charsets_path: str, device_id: int
) -> None:
    """ValueError for the ddddocr arguments a bundle cannot honour, with what to do instead."""
    if det:
        raise ValueError("det=True: " + _NOT_HERE.format(what="detection (its own model)"))
    if not ocr:
        raise ValueError("ocr=False: " + _NOT_HERE.format(what="the slide-only mode"))
    if import_onnx_path or charsets_path:
        name = "import_onnx_path" if import_onnx_path else "charsets_path"
        raise ValueError(
            f"{name}: the bundle replaces import_onnx_path and charsets_path (it holds the "
            "model and its charset); build a bundle from that model (params.yaml model: "
            "source: file) and pass bundle=..."
        )
    if device_id != 0:
        raise ValueError(
            f"device_id={device_id}: the runtime chooses providers by name only; leave "
            f"device_id 0 and set CUDA_VISIBLE_DEVICES={device_id}"
        )


def _providers(use_gpu: bool, providers: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """None keeps the manifest's providers; use_gpu asks CUDA first (skipped, and recorded as
    an event, where onnxruntime has no CUDA) unless providers are given."""
    if providers is not None:
        return providers
    return GPU_PROVIDERS if use_gpu else None


def _loader(
    bundle: str | os.PathLike[str] | None,
    files: Mapping[str, bytes] | None,
    archive: bytes | None,
    public_key: PublicKey | None,
) -> Callable[[tuple[str, ...] | None], Recognizer]:
    """How to (re)load the one bundle given: switch_device reloads with other providers."""
    sources = (("bundle", bundle), ("files", files), ("archive", archive))
    given = [name for name, value in sources if value is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of bundle= (a folder), files= (name -> bytes) or archive= "
            f"(zip bytes); got {', '.join(given) or 'none'}"
        )
    if bundle is not None:
        return lambda p: Recognizer.from_bundle(Path(bundle), p, public_key=public_key)
    if files is not None:
        return lambda p: Recognizer.from_files(files, p, public_key=public_key)
    assert archive is not None
    return lambda p: Recognizer.from_bytes(archive, p, public_key=public_key)
