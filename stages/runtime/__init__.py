"""The installable runtime of a bundle: onnxruntime, numpy and Pillow only.

    from stages.runtime import Recognizer
    rec = Recognizer.from_bundle("bundles/low")
    print(rec.predict(open("captcha.png", "rb").read()).text)

Install it alone with `pip install ./runtime` (see runtime/pyproject.toml); it never imports
onnx, pydantic, dvc or OpenCV (unless a bundle's preprocessing asks for OpenCV).
"""

from .errors import BundleError, ImageError, PipelineError
from .recognizer import Recognizer, Result

__all__ = ["BundleError", "ImageError", "PipelineError", "Recognizer", "Result"]
