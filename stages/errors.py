"""One exception family; every message says what was wrong, what was given and what is allowed."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose (exit code 2 in the CLI)."""


class FieldValueError(ValueError):
    """A settings object refused one field's value; `field` lets the recipe loader report the
    full path (runtime.intra_op_threads), not only the section."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field} {message}")


class RecipeError(PipelineError):
    """A recipe, pipeline.yaml or params.yaml is missing, malformed or invalid."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file, self.field = file, field
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


class ModelError(PipelineError):
    """A model file is unreadable or is not a CTC recognizer this pipeline can handle."""


class DataError(PipelineError, ValueError):
    """A dataset split on disk is missing or malformed; the message names the file."""


class PassError(PipelineError):
    """A pass could not do what the recipe asked; nothing was written."""

    def __init__(self, pass_name: str, message: str) -> None:
        self.pass_name = pass_name
        super().__init__(f"pass '{pass_name}': {message}")


class UnknownNameError(PipelineError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])
