"""Vectorized CTC greedy decoding shared by evaluation, bench, the runtime and the server.

A model declares whether its output is `logits` (softmax applied here for confidences) or
already `probabilities` (a final Softmax in the graph: used as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

OutputKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class Decoded:
    text: str
    # weakest emitted character's probability; with no character, the mean blank probability;
    # None when not asked for (evaluation skips the softmax)
    confidence: float | None = None
    char_probs: list[float] | None = None


def to_time_major(output: np.ndarray, layout: str, item: int = 0) -> np.ndarray:
    """Return [T, C] for batch item `item` from a TBC or BTC output."""
    if output.ndim == 2:
        return output
    return output[:, item, :] if layout == "TBC" else output[item]


def batch_size(output: np.ndarray, layout: str) -> int:
    return 1 if output.ndim == 2 else output.shape[1 if layout == "TBC" else 0]


def greedy_path(steps: np.ndarray, blank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best path: (class indices kept, their step positions); no Python loop over steps."""
    best = steps.argmax(axis=-1)
    keep = best != blank
    keep[1:] &= best[1:] != best[:-1]  # collapse repeats before dropping blanks
    pos = np.flatnonzero(keep)
    return best[pos], pos


def decode(
    output: np.ndarray,
    charset: list[str],
    layout: str = "TBC",
    blank: int = 0,
    with_probs: bool = False,
    kind: OutputKind = "logits",
    item: int = 0,
) -> Decoded:
    """Greedy CTC decode of one image's output into text (and confidence when asked)."""
    steps = to_time_major(output, layout, item)
    idx, pos = greedy_path(steps, blank)
    text = "".join(charset[i] for i in idx.tolist())
    if not with_probs:
        return Decoded(text)
    step_p = steps.max(axis=-1).astype(np.float64) if kind == "probabilities" else max_probs(steps)
    char_p = step_p[pos]
    conf = float(char_p.min()) if char_p.size else float(step_p.mean()) if step_p.size else 0.0
    return Decoded(text, conf, char_p.tolist())


def decode_batch(
    output: np.ndarray,
    charset: list[str],
    layout: str,
    blank: int,
    kind: OutputKind,
    with_probs: bool = True,
) -> list[Decoded]:
    """One Decoded per batch item of a [T, B, C] or [B, T, C] output."""
    return [
        decode(output, charset, layout, blank, with_probs, kind, item)
        for item in range(batch_size(output, layout))
    ]


def max_probs(steps: np.ndarray) -> np.ndarray:
    """Softmax probability of the best class at every step, without the full softmax."""
    shifted = steps.astype(np.float64) - steps.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=-1)
