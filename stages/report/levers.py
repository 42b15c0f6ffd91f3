"""The class page's "Levers" section: each variant of the class's pass options (the levers
stage, metrics/levers/<C>.json) against the float model the class quantizes."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import BenchRecord, LeverRecord, LeverRow, LeverSet
from .format import DASH, change_pts, fmt, isa_words, same_machine, table


@dataclass(frozen=True)
class Limits:
    """What the verdict judges every row by: the agreement goal and the class's budgets, with
    the shipped bundle's measured figures that turn a row's model into an estimate of its
    bundle (the levers stage builds models, not bundles)."""

    goal: float  # agreement with the float model on every evaluation set
    max_ships_mb: float | None  # budgets.max_size_mb: what the app ships
    min_speedup: float | None  # budgets.min_warm_speedup: warm speed against stock
    ships_extra_mb: float  # what the shipped bundle adds to its model file
    shipped_speedup: float | None  # the shipped bundle's warm speed against stock
    bench_machine: dict  # whose timings shipped_speedup is (BenchRecord.machine)


def limits_of(m: BenchRecord, lev: LeverRecord, goal: float) -> Limits | None:
    """The limits from the class's bench record; None without a built shipped row."""
    shipped = next((r for r in lev.rows if r.name == "shipped" and r.size_mb), None)
    bundle = m.variants.get("bundle")
    if shipped is None or bundle is None or bundle.ships_mb is None:
        return None
    size, speed = m.budgets.get("max_size_mb"), m.budgets.get("min_warm_speedup")
    return Limits(
        goal=goal,
        max_ships_mb=size.limit if size else None,
        min_speedup=speed.limit if speed else None,
        ships_extra_mb=bundle.ships_mb - shipped.size_mb,
        shipped_speedup=m.bundle_ratios.warm_speedup if m.bundle_ratios else None,
        bench_machine=m.machine,
    )


TIMING_FACTS = ("cpu", "isa", "usable_cores", "onnxruntime")


def timed_elsewhere(lev: LeverRecord, limits: Limits) -> str:
    """A sentence when the levers rows were timed on another machine than the bench (the
    levers stage reruns on numerics, not on the x86 kind: machine.json `numerics`)."""
    a, b = lev.machine, limits.bench_machine
    if same_machine(a, b, TIMING_FACTS):
        return ""
    return (
        f" The rows were timed on {isa_words(a)}, the bench on {isa_words(b)}: the speed "
        "column mixes two machines' ratios (int8 gains follow the CPU's VNNI support); "
        f"`dvc repro -f -s levers@{lev.target}` times the rows on this machine."
    )


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


@dataclass(frozen=True)
class Judged:
    """One row against the limits."""

    worst: str  # the evaluation set it agrees least on
    agreement: float  # on that set
    ships_mb: float  # estimated
    speedup: float | None  # estimated, against stock
    over: list[str]  # the budgets it misses: size, speed
    goal: bool  # agreement at least the goal on every evaluation set


def judge(r: LeverRow, shipped: LeverRow, limits: Limits) -> Judged:
    worst = min(r.eval, key=lambda s: r.eval[s].agreement)
    ships = (r.size_mb or 0.0) + limits.ships_extra_mb
    speed = None
    if limits.shipped_speedup and r.warm_ms and shipped.warm_ms:
        speed = limits.shipped_speedup * shipped.warm_ms / r.warm_ms
    over = []
    if limits.max_ships_mb is not None and ships > limits.max_ships_mb:
        over.append("size")
    if limits.min_speedup is not None and speed is not None and speed < limits.min_speedup:
        over.append("speed")
    agreement = r.eval[worst].agreement
    return Judged(worst, agreement, ships, speed, over, agreement >= limits.goal)


def verdict(lev: LeverRecord, limits: Limits) -> str:
    """Which rows reach the agreement goal on every evaluation set and which fit the class's
    size and speed budgets: the best figure within the budgets, and why the rest is not."""
    shipped = next(r for r in lev.rows if r.name == "shipped")
    judged = {r.name: judge(r, shipped, limits) for r in lev.rows if r.error is None and r.eval}
    rows = [
        [name, f"{j.worst} {fmt(j.agreement, 3)}", fmt(j.ships_mb, 2),
         f"{j.speedup:.2f}×" if j.speedup else DASH, "yes" if j.goal else "no",
         f"over: {', '.join(j.over)}" if j.over else "within"]
        for name, j in judged.items()
    ]  # fmt: skip
    reach = [n + (f" (over: {', '.join(j.over)})" if j.over else "") for n, j in judged.items()
             if j.goal]  # fmt: skip
    fits = [n for n, j in judged.items() if not j.over]
    top = max(fits, key=lambda n: judged[n].agreement, default=None)
    best = f"{top} ({judged[top].worst} {fmt(judged[top].agreement, 3)})" if top else ""
    budgets = [f"ships ≤ {fmt(limits.max_ships_mb, 1)} MB"] if limits.max_ships_mb else []
    budgets += [f"≥ {fmt(limits.min_speedup, 1)}× stock"] if limits.min_speedup else []
    header = ["variant", "worst evaluation set", "ships ≈ MB", "× stock ≈", "goal", "budgets"]
    return "\n\n".join([
        f"**Verdict.** Goal: agreement ≥ {limits.goal} with the float model on every evaluation "
        f"set. Budgets: {', '.join(budgets) or 'none'}. A row ships ≈ its model plus the "
        f"{fmt(limits.ships_extra_mb, 2)} MB the shipped bundle adds to its model; its speed ≈ "
        f"the shipped bundle's {fmt(limits.shipped_speedup, 2)}× stock (bench) times the "
        "shipped row's warm ms over the row's (timed above)." + timed_elsewhere(lev, limits),
        table(header, rows),
        f"Reach the goal: {', '.join(reach) or 'none'}. Best within the budgets: {best or 'none'}."
        + fragile_words(lev, limits.goal),
    ])  # fmt: skip


def fragile_words(lev: LeverRecord, goal: float) -> str:
    """A sentence naming the first fragility row (float16, then growing random changes of the
    float model's weights) whose texts already miss the goal on some evaluation set."""
    for r in lev.fragility:
        if r.error is None and r.eval:
            worst = min(r.eval, key=lambda s: r.eval[s].agreement)
            if r.eval[worst].agreement < goal:
                return (
                    f" The float model itself misses the goal with its weights changed as "
                    f"little as in `{r.name}` ({worst} {fmt(r.eval[worst].agreement, 3)}; "
                    '"How fragile" above): there, the goal asks for outputs closer to the '
                    "float model's than that change leaves them."
                )
    return ""


def split_part(lev: LeverRecord, evals: list[str]) -> str | None:
    """The shipped row beside its static int8 group's parts (the levers stage's `split`)."""
    shipped = next((r for r in lev.rows if r.name == "shipped" and r.error is None), None)
    if not lev.split or shipped is None:
        return None
    rows = [
        [r.name, *[set_cell(r.eval.get(s)) for s in evals]] if r.error is None
        else [r.name, *[f"not split: {r.error}"] * len(evals)]
        for r in [shipped, *lev.split]
    ]  # fmt: skip
    return "\n\n".join([
        "**Which part of the static int8 group costs the agreement.** The shipped model, then "
        "its static group with only the weights int8 (activations float), then with only the "
        "activations int8 (the float model's weights), then as shipped but with the "
        "activations one op type produces float (`<op> outputs float`: one row per op type "
        "whose outputs are quantized); dynamic int8 ops as shipped in all "
        "(`stages/quant_split.py`). A cost that one kind of tensor holds shows in its row "
        "coming close to the int8-weights row; a cost spread over all leaves every such row "
        "near the shipped one, and then no lever that spares one kind of tensor (keeping it "
        "float, equalizing its channels) wins it back. None is a model to ship: onnxruntime "
        "runs float kernels on it, so none is timed.",
        table(["model", *[f"{s} (eval)" for s in evals]], rows),
    ])  # fmt: skip


def fragility_part(lev: LeverRecord, val: list[str], evals: list[str]) -> str | None:
    """The float model with its weights slightly changed (the levers stage's `fragility`)."""
    if not lev.fragility:
        return None
    rows = [
        [r.name, *[set_cell(r.val.get(s)) for s in val], *[set_cell(r.eval.get(s)) for s in evals]]
        for r in lev.fragility
    ]
    return "\n\n".join([
        "**How fragile the float model's texts are.** The float model itself, scored like the "
        "rows, with its weights slightly changed (`stages/perturb.py`): rounded to float16, "
        "and each weight times 1 + a seeded random change whose standard deviation is the "
        "stated share (params.yaml `levers.weight_noise`). int8 with a scale per output "
        "channel moves a weight by up to half a step: 0.4 % of its channel's largest weight, "
        "more of smaller ones. So a row here that changes the weights less than int8 does, yet "
        "agrees less than the goal on a set, says that set's texts flip under any such "
        "change: a variant agreeing more there must leave the outputs closer to the float "
        "model's than that change does. Not timed, not models to ship.",
        table(["model", *[f"val {s}" for s in val], *[f"{s} (eval)" for s in evals]], rows),
    ])  # fmt: skip


def qat_part(lev: LeverRecord) -> str | None:
    """What each fine-tuned row's training did to its divergence from the float model, on
    the tensors it trained on and on validation tensors it did not."""
    rows = [
        [r.name, f"{r.qat.images} × {r.qat.epochs}",
         f"{r.qat.kl_before:.3g} → {r.qat.kl_after:.3g}",
         str(r.qat.held_out_images),
         f"{r.qat.held_out_kl_before:.3g} → {r.qat.held_out_kl_after:.3g}"]
        for r in lev.rows if r.qat is not None
    ]  # fmt: skip
    if not rows:
        return None
    return "\n\n".join([
        "**What the fine-tune learned** (`qat_images`: `stages/passes/_qat.py`). The mean "
        "per-frame KL divergence of the static int8 model's class distribution from the float "
        "model's, before and after the fine-tune, on the calibration tensors it trained on and "
        "on validation tensors it never trained on (float64 fake quantization, as the "
        "fine-tune computes it). A fall on the first alone is the calibration images learned, "
        "not the int8 noise.",
        table(["variant", "tensors × epochs", "KL trained on", "held-out tensors",
               "KL held out"], rows),
    ])  # fmt: skip


def levers_section(lev: LeverRecord | None, limits: Limits | None = None) -> list[str]:
    """Markdown parts of the section; none when the class measures no variant. With `limits`,
    a verdict ends it."""
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
        f"same {lev.timing_images} images; a time is that machine's only. The rows' texts "
        "are every x86 machine's (exact int8 kernels), so another x86 build machine keeps "
        "this table; its times stay the machine's named here."
    )
    patches = [f"- `{r.name}`: `{r.patch}`" for r in lev.rows if r.patch]
    refused = [f"- `{r.name}` refused: {r.error}" for r in lev.rows if r.error]
    parts = [intro, table(header, rows), "Patches:\n\n" + "\n".join(patches)]
    if refused:
        parts.append("Refused variants (the pass's own message, with the best it found):\n\n"
                     + "\n".join(refused))  # fmt: skip
    for part in (qat_part(lev), split_part(lev, evals), fragility_part(lev, val, evals)):
        if part:
            parts.append(part)
    if limits is not None and any(r.name == "shipped" for r in built):
        parts.append(verdict(lev, limits))
    return parts
