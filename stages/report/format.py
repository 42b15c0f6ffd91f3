"""Cells and tables of the report: numbers, percentages, signed changes and ratios as text, a
markdown table, the per-set accuracy cells every table of a variant shares, and the measuring
machine's int8 extensions in words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..measure.metrics import RATIO_BUDGETS
from ..records import BenchRecord, Change, MemorySetting, VariantMetrics
from ..scoring import accuracy_change_interval

DASH = "–"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value * 100:.{digits}f}"


def signed(value: float | None, digits: int = 1) -> str:
    # adding 0.0 turns -0.0 into 0.0, so "no change" never prints as "-0.0"
    return DASH if value is None else f"{round(value, digits) + 0.0:+.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def times(value: float | None, spread: list[float] | None = None) -> str:
    """A ratio with three decimals: the inputs are rounded medians, so two would make a median
    ratio look outside its own per-round spread."""
    if value is None:
        return DASH
    return f"{value:.3f}× [{spread[0]:.3f}–{spread[1]:.3f}]" if spread else f"{value:.3f}×"


def set_names(m: BenchRecord) -> list[str]:
    return list(m.dataset.get("eval_images", {}))


def acc_cells(v: VariantMetrics, sets: list[str], ref: VariantMetrics | None = None) -> list[str]:
    """Accuracy % per set, with the change against `ref` in points when given."""
    out = []
    for s in sets:
        r = v.sets.get(s)
        if r is None:
            out.append(DASH)
            continue
        base = ref.sets.get(s) if ref is not None else None
        delta = f" ({signed((r.accuracy - base.accuracy) * 100)})" if base else ""
        out.append(f"{pct(r.accuracy)}{delta}")
    return out


def change_cell(c: Change | None) -> str:
    """Agreement with the compared model's texts, then answers it read right and this one
    wrong (-) and the other way round (+)."""
    if c is None:
        return DASH
    return f"{fmt(c.agreement, 3)}, -{c.right_to_wrong} / +{c.wrong_to_right}"


def change_pts(right_to_wrong: int, wrong_to_right: int, images: int) -> str:
    """An accuracy change in points with its 95 % interval from the flips (what the set
    resolves: scoring.accuracy_change_interval), e.g. "-0.9 [-2.0, +0.4]"."""
    delta, lo, hi = accuracy_change_interval(right_to_wrong, wrong_to_right, images)
    return f"{signed(delta)} [{signed(lo)}, {signed(hi)}]"


def same_machine(a: dict[str, Any], b: dict[str, Any], facts: tuple[str, ...]) -> bool:
    """Whether two records' `machine` facts agree on `facts` (an empty record: unknown, kept
    as the same)."""
    return not a or not b or all(a.get(k) == b.get(k) for k in facts)


def isa_words(machine: dict[str, Any]) -> str:
    """The measuring machine (a record's `machine`) and its int8 extensions in words."""
    isa = machine.get("isa", [])
    vnni = {"avx512_vnni", "avx_vnni"} & set(isa)
    kind = "with VNNI" if vnni else "without VNNI" if "avx2" in isa else "no x86 int8 extension"
    return f"{machine['cpu']} ({', '.join(isa) or 'none'}: {kind})"


GROWTH_HEADER = "RSS growth MB (2nd half)"  # the long-session columns (growth_cell)


def growth_cell(v: VariantMetrics | MemorySetting) -> str:
    """RSS growth over the whole long session, then over its second half alone: a leak shows
    in both, a one-time step of the first calls only in the first."""
    if v.rss_growth_mb is None:
        return DASH
    return f"{fmt(v.rss_growth_mb, 1)} ({fmt(v.rss_growth_late_mb, 1)})"


def on_the_edge(m: BenchRecord) -> dict[str, list[float]]:
    """Ratio budgets whose limit lies inside the rounds' min-max: the median decides them, and
    some round fell on the other side, so another run of this machine may decide otherwise."""
    edge = {}
    for name, (ratio, _) in RATIO_BUDGETS.items():  # those the rounds measure have a spread
        budget, spread = m.budgets.get(name), m.bundle_ratios_spread.get(ratio)
        limit = budget.limit if budget is not None else None
        if limit is not None and spread and spread[0] < limit < spread[1]:
            edge[name] = spread
    return edge


def edge_words(spread: list[float]) -> str:
    return f"on the edge: its rounds span {spread[0]:.2f}–{spread[1]:.2f}"
