"""One exception family; every message says what was wrong, what was given and what is allowed.

The root, PipelineError, lives in the standalone runtime (ocr_bundles_runtime.errors) together with
ImageError and BundleError; the build side adds its subclasses here.
"""

from __future__ import annotations

from ocr_bundles_runtime.errors import BundleError, FieldValueError, ImageError, PipelineError

__all__ = [
    "BundleError",
    "DataError",
    "FieldValueError",
    "ImageError",
    "ModelError",
    "PassError",
    "PipelineError",
    "ProfileError",
    "RecipeError",
    "UnknownNameError",
]


class RecipeError(PipelineError):
    """A recipe, pipeline.yaml or params.yaml is missing, malformed or invalid."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file, self.field = file, field
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


class ModelError(PipelineError):
    """A model file is unreadable or is not a CTC recognizer this pipeline can handle."""


class DataError(PipelineError):
    """A dataset is missing or malformed; the message names the file and what to do."""


class PassError(PipelineError):
    """A pass could not do what the recipe asked; nothing was written."""

    def __init__(self, pass_name: str, message: str) -> None:
        self.pass_name = pass_name
        super().__init__(f"pass '{pass_name}': {message}")


class ProfileError(PipelineError):
    """A model could not run on a CPU profile (emulator missing or its worker failed)."""


class UnknownNameError(PipelineError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])
