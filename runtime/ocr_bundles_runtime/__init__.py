"""The installable runtime of a bundle: onnxruntime, numpy and Pillow only.

    from ocr_bundles_runtime import Recognizer
    rec = Recognizer.from_bundle("bundles/low")          # or .from_files({...}) / .from_bytes(zip)
    print(rec.predict(open("captcha.png", "rb").read()).text)

    from ocr_bundles_runtime.ddddocr import DdddOcr     # ddddocr's API over a bundle
    DdddOcr(bundle="bundles/low").classification(open("captcha.png", "rb").read())

Install it alone with `pip install ./runtime` (see runtime/pyproject.toml); it never imports
onnx, pydantic, dvc or OpenCV (unless a bundle's preprocessing asks for OpenCV).
"""

from .conformance import CheckReport, VectorResult
from .decode import Decoded
from .errors import BundleError, ImageError, PipelineError
from .recognizer import Pass, Recognizer, Result

__all__ = [
    "BundleError",
    "CheckReport",
    "Decoded",
    "ImageError",
    "Pass",
    "PipelineError",
    "Recognizer",
    "Result",
    "VectorResult",
]
