"""Bench arithmetic: per-round figures, medians with spreads, ratios against stock, figures
attributable to the model, and budgets. Standard library only, so the report stage (and
anyone reading metrics) needs neither numpy nor onnxruntime.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from typing import Any

from ..records import Budget, Ratios, VariantMetrics

# medians over rounds; the worker's own measurements per run
TIMED = (
    "cold_start_ms",
    "import_ms",
    "session_ms",
    "first_ms",
    "warm_p50_ms",
    "warm_p95_ms",
    "model_p50_ms",
    "peak_rss_mb",
    "cpu_s_per_1000",
)
ONE_DECIMAL = ("cold_start_ms", "import_ms", "session_ms", "first_ms", "peak_rss_mb")
SPREAD_RATIOS = ("warm_speedup", "cold_start", "peak_rss", "cpu")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in 0..100."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def round_stats(run: dict[str, Any]) -> dict[str, float | None]:
    """One worker run -> its figures (ms, MB, CPU-s per 1000)."""
    model = run.get("model_ms")
    calls = len(run["total_ms"])
    return {
        "cold_start_ms": run["cold_start_ms"],
        "import_ms": run.get("import_ms"),
        "session_ms": run.get("session_ms"),
        "first_ms": run.get("first_ms"),
        "warm_p50_ms": percentile(run["total_ms"], 50),
        "warm_p95_ms": percentile(run["total_ms"], 95),
        "model_p50_ms": percentile(model, 50) if model else None,
        "peak_rss_mb": run["peak_rss_mb"],
        "cpu_s_per_1000": run["cpu_s"] / calls * 1000 if calls and "cpu_s" in run else None,
    }


def _round(value: float, key: str) -> float:
    return round(value, 1) if key in ONE_DECIMAL else round(value, 3)


def summarize(rounds: list[dict[str, float | None]]) -> dict[str, Any]:
    """Median over rounds of each figure, and its [min, max] spread."""
    out: dict[str, Any] = {}
    spread: dict[str, list[float]] = {}
    for key in TIMED:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = _round(statistics.median(values), key)
        spread[key] = [_round(min(values), key), _round(max(values), key)]
    out["spread"] = spread
    return out


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def ratios(v: VariantMetrics, stock: VariantMetrics) -> Ratios:
    """`v` against `stock` measured the same way (see Ratios for the directions)."""
    drops = {
        s: round((stock.sets[s].accuracy - r.accuracy) * 100, 2) if s in stock.sets else None
        for s, r in v.sets.items()
    }
    size = v.ships_mb if v.ships_mb is not None else v.size_mb
    return Ratios(
        size=_ratio(size, stock.size_mb),
        warm_speedup=_ratio(stock.warm_p50_ms, v.warm_p50_ms),
        cold_start=_ratio(v.cold_start_ms, stock.cold_start_ms),
        peak_rss=_ratio(v.peak_rss_mb, stock.peak_rss_mb),
        cpu=_ratio(v.cpu_s_per_1000, stock.cpu_s_per_1000),
        attributable_cold_start=_ratio(
            v.attributable_cold_start_ms, stock.attributable_cold_start_ms
        ),
        attributable_peak_rss=_ratio(v.attributable_peak_rss_mb, stock.attributable_peak_rss_mb),
        accuracy_drop_pts=drops,
    )


def ratio_spread(
    runs: list[dict[str, Any]], stock_runs: list[dict[str, Any]]
) -> dict[str, list[float]]:
    """[min, max] of each timed ratio over the rounds. Rounds interleave the variants, so
    machine-wide drift (which moves every absolute median between runs) cancels in a ratio."""
    per_round = []
    for run, stock in zip(runs, stock_runs, strict=False):
        a, b = round_stats(run), round_stats(stock)
        per_round.append(
            {
                "warm_speedup": _ratio(b["warm_p50_ms"], a["warm_p50_ms"]),
                "cold_start": _ratio(a["cold_start_ms"], b["cold_start_ms"]),
                "peak_rss": _ratio(a["peak_rss_mb"], b["peak_rss_mb"]),
                "cpu": _ratio(a["cpu_s_per_1000"], b["cpu_s_per_1000"]),
            }
        )
    out = {}
    for key in SPREAD_RATIOS:
        values = [r[key] for r in per_round if r[key] is not None]
        if values:
            out[key] = [min(values), max(values)]
    return out


def attributable(v: VariantMetrics, floor: VariantMetrics | None) -> dict[str, float | None]:
    """Cold start and peak RSS minus the runtime floor of the same process kind: what the model
    (and its preprocessing choices) add on top of Python + the runtime's imports."""
    if floor is None or floor.skipped or v.skipped:
        return {"attributable_cold_start_ms": None, "attributable_peak_rss_mb": None}

    def minus(a: float | None, b: float | None) -> float | None:
        return round(max(a - b, 0.0), 1) if a is not None and b is not None else None

    return {
        "attributable_cold_start_ms": minus(v.cold_start_ms, floor.cold_start_ms),
        "attributable_peak_rss_mb": minus(v.peak_rss_mb, floor.peak_rss_mb),
    }


# each budget on a ratio against stock: the Ratios field it limits, and whether it is a floor
RATIO_BUDGETS: dict[str, tuple[str, bool]] = {
    "max_attributable_rss_ratio": ("attributable_peak_rss", False),
    "max_cpu_ratio": ("cpu", False),
    "min_warm_speedup": ("warm_speedup", True),
}


def check_budgets(
    budgets: Any,
    shipped: VariantMetrics,
    reference: VariantMetrics,
    vs_stock: Ratios | None,
    judged_sets: Collection[str] | None = None,
) -> dict[str, Budget]:
    """Each recipe budget with the shipped variant's value and whether it holds (ok None: no
    limit set, or nothing measured to judge). The accuracy budget is judged on every set the
    build decided on (`judged_sets`; None: every set): a set the source model cannot read was
    left out of the decisions, and its drop is noise. Its entry is the worst set."""

    def judged(
        limit: float | None, value: float | None, set_: str | None = None, floor: bool = False
    ) -> Budget:
        ok = None
        if limit is not None and value is not None:
            ok = bool(value >= limit - 1e-9) if floor else bool(value <= limit + 1e-9)
        return Budget(limit=limit, value=value, ok=ok, set=set_)

    drops = {
        s: round((reference.sets[s].accuracy - r.accuracy) * 100, 2)
        for s, r in shipped.sets.items()
        if s in reference.sets and (judged_sets is None or s in judged_sets)
    }
    worst = max(drops, key=lambda s: drops[s]) if drops else None
    size = shipped.ships_mb if shipped.ships_mb is not None else shipped.size_mb
    out = {
        "max_size_mb": judged(budgets.max_size_mb, size),
        "max_warm_p50_ms": judged(budgets.max_warm_p50_ms, shipped.warm_p50_ms),
        "max_peak_rss_mb": judged(budgets.max_peak_rss_mb, shipped.peak_rss_mb),
        "max_accuracy_drop_pts": judged(
            budgets.max_accuracy_drop_pts, drops.get(worst) if worst else None, worst
        ),
    }
    for name, (field, floor) in RATIO_BUDGETS.items():
        value = getattr(vs_stock, field) if vs_stock is not None else None
        out[name] = judged(getattr(budgets, name), value, floor=floor)
    return out
