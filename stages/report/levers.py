"""The class page's "Levers" section: each variant of the class's pass options (the levers
stage, metrics/levers/<C>.json) against the float model the class quantizes."""

from __future__ import annotations

from ..records import LeverRecord, LeverRow, LeverSet
from .format import DASH, change_pts, fmt, isa_words, table


def set_cell(s: LeverSet | None) -> str:
    """Agreement with the float model's texts; accuracy change in points with its 95 %
    interval (scoring.accuracy_change_interval); flips -/+."""
    if s is None:
        return DASH
    return (
        f"{fmt(s.agreement, 3)} ({change_pts(s.right_to_wrong, s.wrong_to_right, s.images)}; "
        f"-{s.right_to_wrong}/+{s.wrong_to_right})"
    )


def _ms(row: LeverRow, float_ms: float | None) -> str:
    if row.warm_ms is None:
        return DASH
    if not float_ms:
        return fmt(row.warm_ms, 2)
    return f"{fmt(row.warm_ms, 2)} ({float_ms / row.warm_ms:.2f}×)"


def levers_section(lev: LeverRecord | None) -> list[str]:
    """Markdown parts of the section; none when the class measures no variant."""
    if lev is None or not lev.rows:
        return []
    built = [r for r in lev.rows if r.error is None]
    val = list(built[0].val) if built else []
    evals = list(built[0].eval) if built else []
    header = [
        "variant",
        "float nodes",
        "size MB",
        "warm ms (× float)",
        *[f"val {s}" for s in val],
        *[f"{s} (eval)" for s in evals],
    ]
    rows = [
        [
            r.name,
            ", ".join(r.float_nodes) or "none",
            fmt(r.size_mb, 2),
            _ms(r, lev.float_warm_ms),
            *[set_cell(r.val.get(s)) for s in val],
            *[set_cell(r.eval.get(s)) for s in evals],
        ]
        for r in built
    ]
    images = "every" if lev.eval_images is None else f"the first {lev.eval_images}"
    intro = (
        f"Each variant of this class's pass options (params.yaml `levers.variants.{lev.target}`)"
        f", built with the class's decision data, against the float model it quantizes "
        f"(`{lev.float_model}`, {fmt(lev.float_size_mb, 2)} MB, {fmt(lev.float_warm_ms, 2)} ms "
        "warm). Cells: agreement with that model's texts (accuracy change in points [its 95 % "
        "interval from the flips]; answers it read right and the variant wrong / the other way "
        "round). `val` sets are what the "
        f"build decides on; the evaluation sets ({images} images of each) no decision saw. "
        f"Timed on {isa_words(lev.machine)}, one thread, with the int8 kernels a bundle's .ort "
        f"runs: the median over {lev.timing_rounds} interleaved round(s) of every model on the "
        f"same {lev.timing_images} images; a time is this machine's only."
    )
    patches = [f"- `{r.name}`: `{r.patch}`" for r in lev.rows if r.patch]
    refused = [f"- `{r.name}` refused: {r.error}" for r in lev.rows if r.error]
    parts = [intro, table(header, rows), "Patches:\n\n" + "\n".join(patches)]
    if refused:
        parts.append("Refused variants (the pass's own message, with the best it found):\n\n"
                     + "\n".join(refused))  # fmt: skip
    return parts
