"""How a prediction is judged against its label: one text normalization, one set of scores.

Evaluation, the accuracy-aware passes and the bench all score through `Scoring`, so a model
that emits its space class at line ends, or a site that ignores case, is judged the same way
everywhere. Standard library only: the report stage and the runtime-free tools import it too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Scoring:
    """The declared text normalization (params.yaml: model.scoring)."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    strip: bool = True  # drop whitespace at both ends (CTC models may emit a space class there)
    casefold: bool = False  # compare case-insensitively (the site ignores case)

    def normalize(self, text: str) -> str:
        if self.strip:
            text = text.strip()
        return text.casefold() if self.casefold else text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one row at a time."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def hits(preds: Sequence[str], others: Sequence[str], scoring: Scoring) -> list[bool]:
    """Per image: whether the normalized texts are equal (a label, or another model's text).
    Every exact-match figure (accuracy, agreement, a pass's gate) is the mean of these."""
    if len(preds) != len(others):
        raise ValueError(f"{len(preds)} predictions for {len(others)} texts to compare with")
    norm = scoring.normalize
    return [norm(a) == norm(b) for a, b in zip(preds, others, strict=True)]


def score(preds: Sequence[str], labels: Sequence[str], scoring: Scoring) -> dict[str, Any]:
    """Exact-match accuracy, character error rate and accuracy per label length, all on
    normalized text."""
    if len(preds) != len(labels) or not labels:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    p = [scoring.normalize(t) for t in preds]
    t = [scoring.normalize(x) for x in labels]
    exact = hits(preds, labels, scoring)
    errors = sum(edit_distance(a, b) for a, b in zip(p, t, strict=True))
    by_len: dict[int, list[bool]] = defaultdict(list)
    for ok, label in zip(exact, t, strict=True):
        by_len[len(label)].append(ok)
    return {
        "images": len(labels),
        "accuracy": round(_mean(exact), 5),
        "cer": round(errors / max(1, sum(len(x) for x in t)), 5),
        "by_length": {
            str(k): {"n": len(v), "accuracy": round(_mean(v), 5)} for k, v in sorted(by_len.items())
        },
    }


def agreement(preds: Sequence[str], reference: Sequence[str], scoring: Scoring) -> float:
    """Share of images whose normalized prediction equals the reference model's."""
    return round(_mean(hits(preds, reference, scoring)), 5)


def flips(
    preds: Sequence[str], other: Sequence[str], labels: Sequence[str], scoring: Scoring
) -> dict[str, Any]:
    """How `preds` differ from another model's texts on the same images, both ways: agreement
    alone hides whether the changed answers were right (int8 flips many uncertain answers in
    both directions, so accuracy can hold while fidelity does not)."""
    n = [(scoring.normalize(a), scoring.normalize(b), scoring.normalize(t))
         for a, b, t in zip(preds, other, labels, strict=True)]  # fmt: skip
    return {
        "agreement": round(_mean([a == b for a, b, _ in n]), 5),
        "right_to_wrong": sum(b == t != a for a, b, t in n),
        "wrong_to_right": sum(a == t != b for a, b, t in n),
    }


def accuracy_change_interval(
    right_to_wrong: int, wrong_to_right: int, images: int, z: float = 1.96
) -> tuple[float, float, float]:
    """Accuracy change in points on `images` paired images, and its 95 % interval.

    Only the images whose correctness changed carry the change: given their count m, the
    share that improved is binomial, so Wilson's score interval on that share, mapped to
    points, bounds the change (the conditional method for paired proportions). It says what a
    set resolves: 43 changed answers in 1000 images leave about ±1.3 points."""
    m = right_to_wrong + wrong_to_right
    if m == 0 or images == 0:
        return 0.0, 0.0, 0.0
    p = wrong_to_right / m
    centre = (p + z * z / (2 * m)) / (1 + z * z / m)
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    scale = 100 * m / images
    return scale * (2 * p - 1), scale * (2 * (centre - half) - 1), scale * (2 * (centre + half) - 1)


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
