"""Allowed-character presets and their resolution to an explicit string."""

from __future__ import annotations

import string
from collections.abc import Sequence

# the model's own dictionary: every class it has is allowed, so prune_charset has nothing to do
MODEL = "model"

PRESETS: dict[str, str] = {
    "digits": string.digits,
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "lower_digits": string.ascii_lowercase + string.digits,
    "upper_digits": string.ascii_uppercase + string.digits,
    "letters": string.ascii_letters,
    "letters_digits": string.ascii_letters + string.digits,
}


def resolve(spec: str, model_charset: Sequence[str] | None = None) -> str:
    """A preset name ('lower_digits'), explicit characters after 'chars:' ('chars:0123'), or
    'model': the single-character classes of `model_charset` (the model stage's charset.json)."""
    if spec == MODEL:
        if model_charset is None:
            raise ValueError(
                "charset 'model' is the source model's dictionary, known once the model stage "
                "has run (models/source/charset.json)"
            )
        return model_chars(model_charset)
    if spec.startswith("chars:"):
        chars = spec[len("chars:") :]
        if not chars:
            raise ValueError("'chars:' needs at least one character after the colon")
        if len(set(chars)) != len(chars):
            raise ValueError(f"'{spec}' repeats characters")
        return chars
    if spec not in PRESETS:
        raise ValueError(
            f"unknown charset '{spec}'; use a preset ({', '.join(PRESETS)}), 'chars:<characters>' "
            f"or '{MODEL}' (the model's whole dictionary)"
        )
    return PRESETS[spec]


def model_chars(charset: Sequence[str]) -> str:
    """The characters a CTC dictionary can emit, once each in class order: its blank ('') and
    multi-character entries are no single allowed character."""
    return "".join(dict.fromkeys(c for c in charset if len(c) == 1))
