"""The one exception family: everything the project raises on purpose derives from PipelineError.

It lives in the runtime package because the runtime installs alone (onnxruntime, numpy and
Pillow only); the build side (stages.errors) adds its own subclasses to the same root, and the
CLI maps the family to exit codes.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose (exit code 2 in the build CLI)."""


class FieldValueError(ValueError):
    """A settings object refused one field's value; `field` lets the recipe loader report the
    full path (runtime.intra_op_threads), not only the section. A ValueError so that pydantic,
    which validates these dataclasses inside recipes, reports it as a validation error."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field} {message}")


# Stable error codes an app can switch on, with the advice shown to its developer.
IMAGE_ERRORS: dict[str, str] = {
    "E_EMPTY": "the image is empty; send the image file's bytes",
    "E_DECODE": "not a decodable PNG/JPEG/GIF/BMP/WebP image; check the file or upload",
    "E_TOO_LARGE": "image exceeds the pixel limit; crop or downscale before sending",
    "E_INPUT": "pass bytes, a file path or a HxW / HxWxC uint8 NumPy array",
}


class ImageError(PipelineError):
    """An image could not be decoded or preprocessed; `code` is stable, `retryable` advises."""

    def __init__(self, code: str, detail: str, source: str = "image") -> None:
        self.code, self.detail, self.source = code, detail, source
        self.retryable = False  # the same input fails the same way; only a new image helps
        super().__init__(f"{code}: {source}: {detail} ({IMAGE_ERRORS[code]})")


class BundleError(PipelineError):
    """The bundle folder is missing, malformed, unsafe or wrongly signed, or none of its models
    can be loaded."""
