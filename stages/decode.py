"""Vectorized CTC greedy decoding shared by evaluation, bench and runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decoded:
    text: str
    # weakest emitted character's probability; with no character, the mean blank probability;
    # None when not asked for (evaluation skips the softmax)
    confidence: float | None = None
    char_probs: list[float] | None = None


def to_time_major(logits: np.ndarray, layout: str) -> np.ndarray:
    """Return [T, C] for batch item 0 from a TBC or BTC output."""
    if logits.ndim == 2:
        return logits
    return logits[:, 0, :] if layout == "TBC" else logits[0]


def greedy_path(steps: np.ndarray, blank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best path: (class indices kept, their step positions); no Python loop over steps."""
    best = steps.argmax(axis=-1)
    keep = best != blank
    keep[1:] &= best[1:] != best[:-1]  # collapse repeats before dropping blanks
    pos = np.flatnonzero(keep)
    return best[pos], pos


def decode(
    logits: np.ndarray,
    charset: list[str],
    layout: str = "TBC",
    blank: int = 0,
    with_probs: bool = False,
) -> Decoded:
    """Greedy CTC decode of one image's logits into text (and confidence when asked)."""
    steps = to_time_major(logits, layout)
    idx, pos = greedy_path(steps, blank)
    text = "".join(charset[i] for i in idx.tolist())
    if not with_probs:
        return Decoded(text)
    step_p = max_probs(steps)
    char_p = step_p[pos]
    conf = float(char_p.min()) if char_p.size else float(step_p.mean()) if step_p.size else 0.0
    return Decoded(text, conf, char_p.tolist())


def max_probs(steps: np.ndarray) -> np.ndarray:
    """Softmax probability of the best class at every step, without the full softmax."""
    shifted = steps.astype(np.float64) - steps.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=-1)
