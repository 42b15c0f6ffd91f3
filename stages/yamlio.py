"""Reading the project's YAML files and turning pydantic's errors into one RecipeError that
names the file, the field path as the user wrote it, the value given and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from .errors import FieldValueError, RecipeError


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(str(path), "", "file not found") from None
    except yaml.YAMLError as e:
        raise RecipeError(str(path), "", f"YAML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), "", f"must be a mapping, got {type(data).__name__}")
    return data


# pydantic adds the chosen generator to a style error's location
STYLE_TAGS = ("clean", "hard", "imagecaptcha")


def field_path(loc: tuple[Any, ...]) -> str:
    """`data.synthetic.a.style.width` from pydantic's location, as the user wrote the field."""
    loc = tuple(
        part
        for i, part in enumerate(loc)
        if not (i and loc[i - 1] == "style" and part in STYLE_TAGS)
    )
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def raise_validation(
    file: str, prefix: str, err: ValidationError, fields: list[str] | None = None
) -> NoReturn:
    """Turn pydantic's error into one RecipeError naming file, field path, value and allowed."""
    first = err.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldValueError):  # a dataclass section's own check names its field
        first = {**first, "loc": (*first["loc"], cause.field)}
    if first["type"] == "extra_forbidden" and fields:
        first = {**first, "msg": f"unknown option; allowed options: {', '.join(fields)}"}
    path = field_path((prefix, *first["loc"]) if prefix else tuple(first["loc"]))
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (given: {given!r})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    raise RecipeError(file, path or "<root>", f"{first['msg']}{shown}{more}") from None


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; lists and scalars in `patch` replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
