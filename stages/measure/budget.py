"""The bench's time budget: on a slow machine, fewer rounds and shorter long sessions.

The bench runs every variant's worker `repeats` times and a long session per shipped variant,
so its time follows the machine's inference speed: about 1.2 minutes a class on a VNNI EPYC,
several times that on an AVX2-only one. After the first timing round it projects the stage as
params.yaml asks; when that is over `bench.budget_minutes`, it scales the remaining rounds and
the long sessions' calls down by the same share, never under the floors below, and the metrics
record both what was asked and what ran. A fast machine runs exactly what params ask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_REPEATS = 3  # a median and a spread around it need three rounds
MIN_LONG_SESSION = 200  # 4 KB pages over 200 calls: growth resolved to 20 B a call


@dataclass(frozen=True)
class Plan:
    """What the bench runs after its first round, and why."""

    repeats: int
    long_session: int
    asked_repeats: int
    asked_long_session: int
    projected_s: float  # the stage as params ask, projected after the first round
    budget_s: float | None

    @property
    def cut(self) -> bool:
        return (self.repeats, self.long_session) != (self.asked_repeats, self.asked_long_session)

    def record(self) -> dict[str, Any]:
        """The dataset block's part: what ran (repeats, long_session) and what was asked."""
        out: dict[str, Any] = {"repeats": self.repeats, "long_session": self.long_session}
        if self.budget_s is not None:
            out["budget_minutes"] = round(self.budget_s / 60, 2)
            out["projected_minutes"] = round(self.projected_s / 60, 1)
        if self.cut:
            out["asked"] = {"repeats": self.asked_repeats, "long_session": self.asked_long_session}
        return out

    def message(self, label: str) -> str:
        return (
            f"{label}: as params.yaml asks, this machine would take ~{self.projected_s / 60:.1f} "
            f"min, over bench.budget_minutes {self.budget_s / 60:g}: {self.repeats} rounds "
            f"instead of {self.asked_repeats}, long sessions of {self.long_session} calls instead "
            f"of {self.asked_long_session} (metrics/<class>.json dataset says so)"
        )


def seconds_per_call(run: dict[str, Any]) -> tuple[float, float]:
    """(spawn to first text, one warm call) in seconds, from a worker's timing run."""
    calls = run["total_ms"]
    return run["cold_start_ms"] / 1e3, sum(calls) / len(calls) / 1e3 if calls else 0.0


def fit(
    repeats: int,
    long_session: int,
    budget_minutes: float | None,
    elapsed_s: float,
    round_s: float,
    long_runs: list[tuple[float, float]],
    slots: int,
) -> Plan:
    """The plan after the first round. `elapsed_s`: the stage so far, first round included;
    `round_s`: that round; `long_runs`: (start-up s, s per call) of each long-session variant,
    run `slots` at a time."""

    def rest(r: int, calls: int) -> float:
        long_s = sum(start + calls * call for start, call in long_runs) / max(1, slots)
        return (r - 1) * round_s + (long_s if calls else 0.0)

    left = rest(repeats, long_session)
    projected = elapsed_s + left
    budget_s = None if budget_minutes is None else budget_minutes * 60
    if budget_s is None or projected <= budget_s or left <= 0:
        return Plan(repeats, long_session, repeats, long_session, projected, budget_s)
    share = max(0.0, budget_s - elapsed_s) / left
    r = max(min(repeats, MIN_REPEATS), 1 + math.floor((repeats - 1) * share))
    n = max(min(long_session, MIN_LONG_SESSION), math.floor(long_session * share))
    return Plan(min(r, repeats), min(n, long_session), repeats, long_session, projected, budget_s)
