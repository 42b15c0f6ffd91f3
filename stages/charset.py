"""Allowed-character presets and their resolution to an explicit string."""

from __future__ import annotations

import string

PRESETS: dict[str, str] = {
    "digits": string.digits,
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "lower_digits": string.ascii_lowercase + string.digits,
    "upper_digits": string.ascii_uppercase + string.digits,
    "letters": string.ascii_letters,
    "letters_digits": string.ascii_letters + string.digits,
}


def resolve(spec: str) -> str:
    """A preset name ('lower_digits') or explicit characters after 'chars:' ('chars:0123')."""
    if spec.startswith("chars:"):
        chars = spec[len("chars:") :]
        if not chars:
            raise ValueError("'chars:' needs at least one character after the colon")
        if len(set(chars)) != len(chars):
            raise ValueError(f"'{spec}' repeats characters")
        return chars
    if spec not in PRESETS:
        raise ValueError(
            f"unknown charset '{spec}'; use a preset ({', '.join(PRESETS)}) or 'chars:<characters>'"
        )
    return PRESETS[spec]
