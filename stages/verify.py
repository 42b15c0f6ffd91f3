"""The verification stage: each bundle as shipped, on each CPU profile its class declares.

For every profile the model an app runs (the manifest's first format) reads the first
`verify.images` images of every evaluation set, preprocessed once on this machine (the same
tensors everywhere, so every difference comes from the CPU's kernels), natively where this
machine is such a CPU and under QEMU where it is not. Per profile and set: accuracy, agreement
with the float reference, agreement with the build's texts and the largest output difference
from the build's outputs. The build's reading is its final model on x86-64 with exact int8
kernels, as evaluate reads it (the report's accuracy tables), which every x86 machine computes
alike: so the record depends on machine.json's `numerics`, not on the x86 kind, and another x86
build machine keeps it. What this machine's own CPU reads through the bundle is bench's
(`bundle` accuracy) and the clients stage's. Emulation says nothing about speed: no time is
recorded.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ocr_bundles_runtime.conformance import (
    CheckReport,
    Conformance,
    compare,
    read_vectors,
    steps_of,
    summarize,
)
from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.manifest import BundleSpec, find_bundle, parse_bundle, read_verified
from ocr_bundles_runtime.preprocess import model_input
from ocr_bundles_runtime.session import session_plan

from . import modelio
from .evaluate import EvalSets, eval_runtime
from .installed import emulators
from .profiles.host import host_facts
from .profiles.profile import CpuProfile, Placement, place
from .profiles.run import run_on
from .progress import usable_cores
from .records import ProfileRun, ProfileSet, VerifyRecord
from .scoring import Scoring, agreement, score

BUILD = "the build"  # the final model, exact int8 kernels, on the evaluation's tensors
HERE = "this machine"  # the bundle's primary file run natively, where a float profile needs it
VECTORS = "conformance vectors"  # not an evaluation set: checked, never scored
FLOAT = "float"  # ProfileRun.how: a float model, whose run elsewhere this machine's stands for
FLOAT_REASON = (
    "a float model (no integer op): float kernels agree across ISAs to ~1e-5 "
    "(tests/test_profiles.py), so this machine's run stands for this profile; not emulated "
    "(high's model on x86-avx2 under QEMU: ~40 s per image)"
)
EXACT_REASON = "x86-64 with exact int8 kernels: every x86 CPU computes these outputs"


def integer_model(build_dir: Path) -> bool:
    """Whether the build's final model holds integer (quantized) ops: only then can a CPU's
    kernels change what it reads."""
    return bool(modelio.quantized_ops(modelio.load(Path(build_dir) / "model.onnx")))


def check_vectors(
    spec: BundleSpec, vectors: Conformance, outputs: list[np.ndarray], model_file: str
) -> CheckReport:
    """conformance.py's rule on one profile's outputs for the bundle's vectors."""
    results = [
        compare(v, spec.text_of(y), steps_of(y, spec.layout), vectors.tolerance)
        for v, y in zip(vectors.vectors, outputs, strict=True)
    ]
    return summarize(results, vectors.tolerance, model_file)


@dataclasses.dataclass(frozen=True)
class Subset:
    """The fixed images every profile reads: tensors, labels and the reference's texts."""

    tensors: dict[str, list[np.ndarray]]
    labels: dict[str, list[str]]
    reference: dict[str, list[str]]
    build: dict[str, list[np.ndarray]]  # the build model's input: the evaluation's tensors
    vectors: Conformance | None = None  # fed as the set VECTORS when the bundle has them


def subset(sets: EvalSets, spec: BundleSpec, reference: dict[str, list[str]], n: int) -> Subset:
    """The first `n` images of every set, fed as the bundle's model takes them; the bundle's
    conformance vectors ride along as the set VECTORS."""
    tensors = {s: xs[:n] for s, xs in sets.tensors(spec.preprocess).items()}
    if spec.feed == "pixels":
        feeds = {
            s: [model_input(p, spec.preprocess, spec.feed) for p in ps[:n]]
            for s, ps in sets.images.items()
        }
    else:  # the tensors evaluation made already
        feeds = dict(tensors)
    vectors = read_vectors(spec)
    if vectors is not None:
        feeds[VECTORS] = [
            model_input(read_verified(spec.root, spec.manifest, v.image), spec.preprocess,
                        spec.feed)
            for v in vectors.vectors
        ]  # fmt: skip
    return Subset(
        tensors=feeds,
        labels={s: ts[:n] for s, ts in sets.labels.items()},
        reference={s: ts[:n] for s, ts in reference.items()},
        build=tensors,
        vectors=vectors,
    )


def primary_file(spec: BundleSpec) -> tuple[str, str]:
    """(format, file name) of the model every app call starts with."""
    fmt = spec.manifest.formats[0]
    return fmt, spec.models["primary"].files[fmt]


def outputs_on(
    placement: Placement, spec: BundleSpec, data: Subset, label: str
) -> dict[str, list[np.ndarray]]:
    """The model's outputs for every subset tensor, computed where `placement` says."""
    fmt, name = primary_file(spec)
    plan = session_plan(eval_runtime(spec.runtime), ort_format=fmt == "ort")
    return _run(placement, spec.root / name, plan, data.tensors, label)


def build_outputs(
    build_dir: Path, spec: BundleSpec, data: Subset, label: str
) -> dict[str, list[np.ndarray]]:
    """The build's reading: its final model.onnx on the evaluation's tensors, natively with
    the exact int8 kernels evaluate uses (a .ort file cannot take them on AVX2)."""
    plan = session_plan(eval_runtime(spec.runtime), ort_format=False)
    native = Placement("native", (sys.executable,))
    return _run(native, Path(build_dir) / "model.onnx", plan, data.build, label)


def _run(
    placement: Placement, model: Path, plan: dict, feeds: dict[str, list[np.ndarray]], label: str
) -> dict[str, list[np.ndarray]]:
    flat = [x for xs in feeds.values() for x in xs]
    out = iter(run_on(placement, model, plan, flat, label))
    return {s: [next(out) for _ in xs] for s, xs in feeds.items()}


def texts(spec: BundleSpec, outputs: list[np.ndarray]) -> list[str]:
    return [
        decode(y, spec.charset, spec.layout, spec.blank, kind=spec.kind).text  # type: ignore[arg-type]
        for y in outputs
    ]


def score_profile(
    spec: BundleSpec,
    data: Subset,
    outputs: dict[str, list[np.ndarray]],
    build: dict[str, list[np.ndarray]],
    scoring: Scoring,
) -> dict[str, ProfileSet]:
    out = {}
    for s, ys in outputs.items():
        if s == VECTORS:
            continue
        got, built = texts(spec, ys), texts(spec, build[s])
        acc = score(got, data.labels[s], scoring)["accuracy"]
        ref = score(data.reference[s], data.labels[s], scoring)["accuracy"]
        out[s] = ProfileSet(
            images=len(ys),
            accuracy=round(acc, 5),
            reference_accuracy=round(ref, 5),
            accuracy_drop_pts=round(100 * (ref - acc), 3),
            agreement_reference=agreement(got, data.reference[s], scoring),
            agreement_build=agreement(got, built, scoring),
            max_abs_diff=largest_diff(ys, build[s]),
        )
    return out


def largest_diff(ys: list[np.ndarray], build: list[np.ndarray]) -> float:
    """Largest output difference, to 4 digits: the build's float parts differ between x86
    kinds by ~1e-6, which must not reach a record every x86 machine keeps."""
    diff = max(np.abs(a.astype(np.float64) - b).max() for a, b in zip(ys, build, strict=True))
    return float(f"{diff:.4g}")


def _conformance(run: ProfileRun, report: CheckReport) -> None:
    diff = report.max_value_diff
    run.conformance = report.ok
    run.conformance_max_diff = round(diff, 4) if diff is not None else None
    run.conformance_failure = report.reason or None


def within_budget(
    sets: dict[str, ProfileSet], max_drop_pts: float | None, judged_sets: list[str] | None
) -> bool | None:
    """Whether every set the build decided on (None: every set) stays within the class's
    accuracy budget on this profile, as bench judges the build machine; None: no budget."""
    if max_drop_pts is None:
        return None
    return all(
        r.accuracy_drop_pts <= max_drop_pts + 1e-9
        for s, r in sets.items()
        if judged_sets is None or s in judged_sets
    )


def placements(profiles: dict[str, CpuProfile], integer: bool) -> dict[str, Placement]:
    """Where each profile runs. Without `integer` ops, a profile this machine is not reads
    what this machine reads (FLOAT), emulable or not."""
    emu = emulators()
    places = {name: place(p, emu) for name, p in profiles.items()}
    if integer:
        return places
    return {
        n: pl if pl.how == "native" else Placement(FLOAT, reason=FLOAT_REASON)  # type: ignore[arg-type]
        for n, pl in places.items()
    }


def verify_bundle(
    target: str,
    bundle: Path,
    build_dir: Path,
    sets: EvalSets,
    reference: dict[str, list[str]],
    profiles: dict[str, CpuProfile],
    images: int,
    scoring: Scoring,
    max_drop_pts: float | None,
    judged_sets: list[str] | None = None,
    integer: bool = True,
) -> VerifyRecord:
    """Run the bundle on every profile and score each against the float reference and the
    build's reading (build_outputs); a FLOAT profile gets this machine's run of the bundle."""
    spec = parse_bundle(find_bundle(bundle))
    data = subset(sets, spec, reference, images)
    places = placements(profiles, integer)
    jobs = {n: pl for n, pl in places.items() if pl.how in ("native", "emulated")}
    if any(pl.how == FLOAT for pl in places.values()):
        jobs[HERE] = Placement("native", (sys.executable,))
    with ThreadPoolExecutor(max_workers=max(1, usable_cores())) as pool:
        futures = {
            n: pool.submit(outputs_on, pl, spec, data, f"verify@{target} {n} ({pl.how})")
            for n, pl in jobs.items()
        }
        futures[BUILD] = pool.submit(
            build_outputs, build_dir, spec, data, f"verify@{target} the build (exact int8)"
        )
        results = {n: f.result() for n, f in futures.items()}
    runs = {}
    run_file = primary_file(spec)[1]
    for name, profile in profiles.items():
        pl = places[name]
        run = ProfileRun(
            how=pl.how,
            note=profile.note,
            emulator=" ".join(pl.command[:3]) if pl.how == "emulated" else None,
            reason=pl.reason or None,
        )
        if pl.how != "unavailable":
            got = results[HERE] if pl.how == FLOAT else results[name]
            run.sets = score_profile(spec, data, got, results[BUILD], scoring)
            run.within_budget = within_budget(run.sets, max_drop_pts, judged_sets)
            if data.vectors is not None:
                outputs = got[VECTORS]
                _conformance(run, check_vectors(spec, data.vectors, outputs, run_file))
        runs[name] = run
    return VerifyRecord(
        target=target,
        model_file=primary_file(spec)[1],
        images_per_set=images,
        resolution_pts=round(100 / images, 3),
        max_accuracy_drop_pts=max_drop_pts,
        build_machine=host_facts(),
        build_reading=EXACT_REASON,
        profiles=runs,
    )
