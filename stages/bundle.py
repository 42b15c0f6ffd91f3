"""The bundle stage: what an app ships, and what it may leave out, in one self-checking folder.

bundles/<C>/
  model.ort | model.onnx    the build's final model, in the recipe's `bundle.formats`  (ships)
  charset.json              class index -> string                                      (ships)
  manifest.json             input contract, preprocessing, session settings, CTC contract,
                            confidence threshold, escalation, SHA-256 of every file,
                            ships/optional sizes, provenance, accuracy per set        (ships)
  conformance.json          conformance-NN.png images with the texts and per-step outputs
                            every port must reproduce: `check` in each runtime          (ships)
  fallback.ort | .onnx      the recipe's `bundle.fallback` model, loaded on first need (optional)
  required_operators.config operators of the .ort models, for a minimal onnxruntime  (optional)
  manifest.sig              Ed25519 signature, when signed (`python -m stages sign`)

With `bundle.preprocess: graph` the models take decoded uint8 [H, W, C] pixels and preprocess
in ONNX ops (stages/pixel_graph.py), so an app in any language only decodes the image.
`ocr_bundles_runtime.Recognizer` needs only this folder. The core functions are pure; `write_bundle`
does the I/O atomically (temp folder, self-check with the runtime, rename).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocr_bundles_runtime.conformance import FILE as CONFORMANCE
from ocr_bundles_runtime.conformance import steps_of
from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.manifest import MANIFEST, SIGNATURE
from ocr_bundles_runtime.manifest_record import (
    FORMAT,
    FORMAT_VERSION,
    BundleManifest,
    EscalationSpec,
    FileEntry,
    InputSpec,
    ModelFiles,
    ScoringSpec,
)
from ocr_bundles_runtime.preprocess import MIN_WIDTH, model_input, preprocess
from ocr_bundles_runtime.recognizer import Recognizer
from ocr_bundles_runtime.session import make_session, quiet_cpu_session, run, session_plan

from . import conformance_vectors, modelio
from .atomic import atomic_dir, write_bytes, write_json
from .build import decided_on
from .contract import Contract
from .data.dataset import read_sets
from .errors import ModelError, PipelineError, ProfileError
from .evaluate import eval_runtime
from .installed import emulators
from .ort_canonical import canonical_ort
from .profiles.profile import CpuProfile, place
from .profiles.run import run_on
from .progress import usable_cores
from .recipe import Recipe
from .records import BUILD_FILE, BuildRecord, EvalRecord, read_record
from .source import batches, probe_inputs

ORT_CONFIG = "required_operators.config"


@dataclass(frozen=True)
class FallbackChoice:
    model: onnx.ModelProto
    origin: str  # where it came from, e.g. "stages/03-prune_charset.onnx", "source", "class:mid"
    is_float: bool
    derived: bool  # pruned here to the final charset; otherwise a byte copy of `origin`
    path: Path | None  # the file a byte copy comes from


def choose_fallback(
    final: modelio.CtcSpec, candidates: Iterable[tuple[str, Path, onnx.ModelProto]]
) -> FallbackChoice:
    """`bundle.fallback: float`: the most accurate model to retry unsure images with.

    `candidates` come most-preferred first: the build's stage models from the latest to the
    earliest, then the source model. The rule:
      1. the first float candidate whose charset equals the final model's;
      2. else (the charset was pruned after the last float stage) the first float candidate,
         pruned here with `prune_charset` to the final charset;
      3. else (no float model at all: the source was already int8) the source, pruned if needed.
    The fallback must share the final charset because the bundle carries one charset.json and
    the runtime compares both models' confidences class for class.
    """
    first_float: tuple[str, Path, onnx.ModelProto] | None = None
    last: tuple[str, Path, onnx.ModelProto] | None = None
    for origin, path, model in candidates:
        floating = modelio.is_float(model)
        if floating and modelio.spec(model).charset == final.charset:
            return FallbackChoice(model, origin, True, False, path)
        if floating and first_float is None:
            first_float = (origin, path, model)
        last = (origin, path, model)
    base = first_float or last
    if base is None:
        raise ModelError("no candidate model for the fallback (no stage models, no source)")
    return _matching(base, final, first_float is not None)


def _matching(
    base: tuple[str, Path, onnx.ModelProto], final: modelio.CtcSpec, is_float: bool
) -> FallbackChoice:
    origin, path, model = base
    if modelio.spec(model).charset == final.charset:
        return FallbackChoice(model, origin, is_float, False, path)
    return FallbackChoice(prune_to(model, final, origin), origin, is_float, True, None)


def prune_to(model: onnx.ModelProto, final: modelio.CtcSpec, origin: str) -> onnx.ModelProto:
    """`model` restricted to exactly `final.charset` by the prune_charset pass."""
    from .passes.prune_charset import PruneCharsetOptions, prune_charset
    from .registry import PassContext

    chars = "".join(c for i, c in enumerate(final.charset) if i != final.blank)
    try:
        out = prune_charset(model, PruneCharsetOptions(chars=chars), PassContext())
    except PipelineError as e:
        raise ModelError(f"fallback: cannot prune {origin} to the final charset: {e}") from e
    if modelio.spec(out).charset != final.charset:
        raise ModelError(
            f"fallback: pruning {origin} does not reproduce the final model's charset "
            "(different class order or multi-character classes); put prune_charset before "
            "quantization in the recipe, or choose another bundle.fallback"
        )
    return out


def resolve_fallback(
    choice: str, final: modelio.CtcSpec, build_dir: Path, builds_root: Path, source_dir: Path
) -> FallbackChoice | None:
    """The recipe's `bundle.fallback` as a model, or None for `none`."""
    if choice == "none":
        return None
    if choice == "float":
        return choose_fallback(final, stage_candidates(build_dir, source_dir))
    kind, name = choice.split(":", 1)
    if kind == "stage":
        record = read_record(build_dir / BUILD_FILE, BuildRecord)
        matches = [s for s in record.stages if name in (s.stem, s.pass_name)]
        if not matches:
            known = [s.stem for s in record.stages]
            raise ModelError(f"bundle.fallback: no stage {name!r} in this build; stages: {known}")
        path = build_dir / matches[-1].file
        model = modelio.load(path)
        return _matching((matches[-1].file, path, model), final, modelio.is_float(model))
    path = builds_root / name / "model" / "model.onnx"
    if not path.is_file():
        raise ModelError(
            f"bundle.fallback: class '{name}' has no built model at {path}; add it to "
            "params.yaml targets (and build it first)"
        )
    model = modelio.load(path)
    if modelio.spec(model).charset != final.charset:
        raise ModelError(
            f"bundle.fallback: class '{name}' outputs a different charset; both classes must "
            "keep the same characters (params.yaml charset and their prune_charset options)"
        )
    return FallbackChoice(model, f"class:{name}", modelio.is_float(model), False, path)


def stage_candidates(
    build_dir: Path, source_dir: Path
) -> Iterator[tuple[str, Path, onnx.ModelProto]]:
    """Stage models latest first, then the source; loaded one at a time (each may be 50+ MB)."""
    for path in sorted((build_dir / "stages").glob("[0-9][0-9]-*.onnx"), reverse=True):
        yield f"stages/{path.name}", path, modelio.load(path)
    yield "source", source_dir / "model.onnx", modelio.load(source_dir / "model.onnx")


def input_spec(model: onnx.ModelProto, contract: Contract, recipe: Recipe) -> InputSpec:
    """Name, [N, C, H, "width"] shape and dtype; fixed dims the model declares must agree."""
    pre = recipe.preprocess
    tensor = modelio.input_value(model)
    ttype = tensor.type.tensor_type
    declared = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    expected = [None, pre.channels, pre.height, None]
    if len(declared) != 4 or any(
        d is not None and e is not None and d != e for d, e in zip(declared, expected, strict=True)
    ):
        raise ModelError(
            f"model input '{tensor.name}' is declared {declared} but the recipe's preprocessing "
            f"feeds [1, {pre.channels}, {pre.height}, width]; fix model.input.height/channels"
        )
    if recipe.bundle.preprocess == "graph":
        return InputSpec(
            name="pixels",
            shape=["height", "width", "channels"],
            dtype="uint8",
            feed="pixels",  # decoded uint8 pixels; the graph does `preprocess`
            channels=[1, 3, 4],  # gray, RGB, RGBA (straight alpha, composited on white)
            max_pixels=pre.max_pixels,
        )
    batch = contract.batch and final_batches(model, pre)
    return InputSpec(
        name=tensor.name,
        shape=["batch" if batch else 1, "channels", "height", "width"],  # preprocess's numbers
        dtype=onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name,
        min_width=pre.pad_to_width or MIN_WIDTH,
        batch=batch,
    )


def final_batches(model: onnx.ModelProto, pre: Any) -> bool:
    """The source batched; whether the final model still does, item for item (dynamic int8
    computes one activation scale over the whole batch, so a batch changes each item)."""
    session = quiet_cpu_session(model.SerializeToString())
    return batches(session, probe_inputs(pre), modelio.spec(model).layout)


def recipe_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of `recipe.resolved()`."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def metrics_summary(evaluation: EvalRecord, fallback: FallbackChoice | None) -> dict[str, Any]:
    """Per evaluation set: the final model's (and a stage fallback's) accuracy and CER, and
    the reference's, as evaluate measured them."""
    keys = ("accuracy", "cer")
    v = evaluation.variants
    out: dict[str, Any] = {
        "sets": evaluation.sets,
        "final": {s: {k: getattr(r, k) for k in keys} for s, r in v["final"].sets.items()},
        "reference": {s: {k: getattr(r, k) for k in keys} for s, r in v["reference"].sets.items()},
    }
    stem = Path(fallback.origin).stem if fallback else ""
    if fallback and fallback.origin.startswith("stages/") and not fallback.derived and stem in v:
        out["fallback"] = {s: {k: getattr(r, k) for k in keys} for s, r in v[stem].sets.items()}
    return out


def manifest(
    *,
    target: str,
    final: onnx.ModelProto,
    contract: Contract,
    recipe: Recipe,
    fallback: FallbackChoice | None,
    files: dict[str, dict[str, Any]],
    source: dict[str, Any],
    metrics: dict[str, Any] | None,
    inputs: InputSpec | None = None,
) -> dict[str, Any]:
    """The manifest.json document (see the module docstring for the folder it describes),
    through the typed record every runtime reads. `contract`: the final model's, as the build
    wrote it in recipe.json (read_build_contract): its output and scoring travel as they are."""
    formats = list(recipe.bundle.formats)
    optional = [n for n in files if n.startswith("fallback.") or n == ORT_CONFIG]
    ships = [n for n in files if n not in optional] + [MANIFEST]
    models = {"primary": ModelFiles({f: f"model.{f}" for f in formats}, optional=False)}
    if fallback is not None:
        models["fallback"] = ModelFiles(
            {f: f"fallback.{f}" for f in formats},
            optional=True,
            origin=fallback.origin,
            float=fallback.is_float,
            pruned_here=fallback.derived,
        )
    esc = recipe.bundle.escalation
    record = BundleManifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        target=target,
        formats=formats,  # type: ignore[arg-type]
        input=inputs or input_spec(final, contract, recipe),
        output=contract.output,
        preprocess=recipe.preprocess,
        runtime=recipe.runtime,
        scoring=ScoringSpec(**contract.scoring.as_dict()),
        confidence_threshold=recipe.bundle.confidence_threshold,
        escalation=EscalationSpec(esc.url, esc.timeout_s),
        charset="charset.json",
        conformance=CONFORMANCE if CONFORMANCE in files else None,
        models=models,
        ships=sorted(ships),
        optional=sorted(optional),
        files={n: FileEntry(**e) for n, e in files.items()},
        source=source,
        recipe_sha256=recipe_hash(recipe.resolved()),
        versions={"onnxruntime": metadata.version("onnxruntime")},
        metrics=metrics,
    )
    return record.as_dict()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"sha256": modelio.sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }


# The converter, run in a child: it prints, sets onnxruntime's loggers and imports nothing
# from this project.
CONVERTER = """
import contextlib, io
from pathlib import Path
import onnxruntime as ort
import onnxruntime.tools.convert_onnx_models_to_ort as converter
ort.set_default_logger_severity(3)
with contextlib.redirect_stdout(io.StringIO()):
    converter.convert_onnx_models_to_ort(
        Path("."), output_dir=Path("."), optimization_styles=[converter.OptimizationStyle.Fixed]
    )
"""


def convert_to_ort(folder: Path, names: list[str]) -> None:
    """<name>.ort for each <name>.onnx, and required_operators.config, in `folder`.

    onnxruntime's converter applies the 'all' optimizations without the x86-only NCHWc layout,
    so the .ort files run on ARM phones too. Its writer places objects in an order that
    follows memory addresses (a checkout in another folder, another CPU's packed weights and
    QEMU each gave other bytes for the same graph), so every file is rewritten in canonical
    order (ort_canonical): the same graph gives the same bytes on every machine, and an
    unchanged rebuild reruns nothing downstream."""
    with tempfile.TemporaryDirectory(prefix="ort-convert-") as tmp:
        for name in names:
            shutil.copyfile(folder / f"{name}.onnx", Path(tmp) / f"{name}.onnx")
        proc = subprocess.run(
            [sys.executable, "-I", "-B", "-c", CONVERTER], cwd=tmp, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise ModelError(
                f"converting to .ort failed; set bundle.formats: [onnx] to ship .onnx. "
                f"Converter output:\n{(proc.stdout + proc.stderr)[-2000:]}"
            )
        for name in names:
            data = canonical_ort((Path(tmp) / f"{name}.ort").read_bytes())
            write_bytes(folder / f"{name}.ort", data)
        config = (Path(tmp) / ORT_CONFIG).read_text()
        # the converter names the models by absolute path; keep the file the same everywhere
        write_bytes(folder / ORT_CONFIG, config.replace(f"{Path(tmp).resolve()}/", "").encode())


def self_check(folder: Path, formats: list[str], pre: Any, has_fallback: bool) -> None:
    """Load the bundle exactly as an app would and run one blank image through its models; run
    its conformance vectors and say whether this machine passes them."""
    blank = np.full((pre.height, pre.height * 4), 255, np.uint8)
    for fmt in formats:
        rec = Recognizer.from_bundle(folder, model_format=fmt)
        rec.predict(blank)
        if rec.model != "primary" or (has_fallback and not rec.load_fallback()):
            raise ModelError(f"the written bundle does not load cleanly ({fmt}): {rec.events}")
        report = rec.check()  # this CPU's kernels may differ: reported; verify records each
        verdict = "healthy" if report.ok else f"NOT healthy: {report.reason}"
        print(f"bundle: conformance vectors on this machine ({rec.model_file}): {verdict}")


@dataclass(frozen=True)
class VectorSources:
    """Where conformance vectors come from: validation images and the float model."""

    data: Path
    sources: list[str] | None  # None: every source folder under `data`
    build_dir: Path
    source_dir: Path


def measured_profiles(
    profiles: dict[str, CpuProfile], model: onnx.ModelProto
) -> dict[str, CpuProfile]:
    """The profiles the tolerance is measured on: every one QEMU emulates, so that AVX2 and
    VNNI build machines measure the same numbers (one that only a matching machine runs, such
    as AVX-512 VNNI, would make the bundle depend on the build machine; verify checks it).
    None for a model without integer ops: float kernels agree across ISAs to about 1e-5
    (tests/test_profiles.py), far under the tolerance's floor, and emulating high's float
    model on x86-avx2 cost about 40 s per candidate image on a VNNI build machine."""
    if not modelio.quantized_ops(model):
        return {}
    return {name: p for name, p in profiles.items() if p.qemu_cpu is not None}


class ProfileAgreement:
    """conformance_vectors.choose's `agree`: candidates run through the shipped primary file on
    each profile (one process per profile, emulated or native); remembers each profile's gap
    per candidate image, for conformance.json's `measured`."""

    def __init__(
        self,
        model: Path,
        plan: dict[str, Any],
        inputs: Callable[[bytes], np.ndarray],
        text_of: Callable[[np.ndarray], str],
        layout: str,
        profiles: dict[str, CpuProfile],
        label: str,
    ) -> None:
        self.model, self.plan, self.inputs, self.text_of = model, plan, inputs, text_of
        self.layout, self.profiles, self.label = layout, profiles, label
        self.gaps: dict[str, dict[bytes, float | None]] = {name: {} for name in profiles}

    def __call__(self, cands: list[conformance_vectors.Candidate]) -> list[float | None]:
        xs = [self.inputs(c.png) for c in cands]
        emu = emulators()
        placements = {name: place(profile, emu) for name, profile in self.profiles.items()}
        for name, placement in placements.items():
            if placement.how == "unavailable":
                raise ProfileError(f"{self.label}: profile {name}: {placement.reason}")
            print(f"{self.label}: {len(xs)} vector candidates on {name} ({placement.how})")
        # one single-threaded emulator per profile: side by side on every core
        with ThreadPoolExecutor(max_workers=max(1, usable_cores())) as pool:
            futures = {
                name: pool.submit(run_on, pl, self.model, self.plan, xs, f"{self.label} {name}")
                for name, pl in placements.items()
            }
            for name, future in futures.items():
                outs = future.result()
                self.gaps[name] |= {
                    c.png: self._gap(c, y) for c, y in zip(cands, outs, strict=True)
                }
        return [self._worst(c.png) for c in cands]

    def measured(self, chosen: list[conformance_vectors.Candidate]) -> dict[str, float]:
        return {
            name: round(max((g[c.png] or 0.0 for c in chosen), default=0.0), 4)
            for name, g in self.gaps.items()
        }

    def _worst(self, png: bytes) -> float | None:
        gaps = [g[png] for g in self.gaps.values()]
        return None if None in gaps else max(gaps, default=0.0)  # type: ignore[type-var]

    def _gap(self, c: conformance_vectors.Candidate, out: np.ndarray) -> float | None:
        """The largest step-value difference from `c`'s, or None when the text differs."""
        steps = steps_of(out, self.layout)
        if self.text_of(out) != c.text or len(steps.value) != len(c.steps.value):
            return None
        return float(np.abs(np.subtract(steps.value, c.steps.value)).max(initial=0.0))


def add_conformance(
    folder: Path,
    recipe: Recipe,
    contract: Contract,
    where: VectorSources,
    profiles: dict[str, CpuProfile],
    label: str,
) -> None:
    """Choose the vectors and write them. Their expected outputs come from the bundle's model
    as .onnx with exact int8 kernels (VNNI's integers on every x86 build machine), not from
    this machine's .ort, whose AVX2 int8 kernels saturate: a port is checked against the
    arithmetic the model was built for. Only images every emulable profile of the class reads
    alike become vectors, and the tolerance covers what those profiles computed
    (conformance_vectors' docstring); the verify stage records what each CPU gives."""
    final = modelio.load(where.build_dir / "model.onnx")
    ctc = modelio.spec(final)
    session = make_session((folder / "model.onnx").read_bytes(), recipe.runtime)
    feed = "pixels" if recipe.bundle.preprocess == "graph" else "tensor"
    strip = contract.scoring.strip

    def inputs(png: bytes) -> np.ndarray:
        return model_input(png, recipe.preprocess, feed)

    def text_of(out: np.ndarray) -> str:
        text = decode(out, ctc.charset, ctc.layout, ctc.blank, kind=ctc.kind).text
        return text.strip() if strip else text

    def shipped(png: bytes) -> tuple[str, np.ndarray]:
        out = run(session, inputs(png))
        return text_of(out), out

    float_model = choose_fallback(ctc, stage_candidates(where.build_dir, where.source_dir)).model
    reference = quiet_cpu_session(float_model.SerializeToString())
    sources = where.sources or sorted(p.parent.name for p in where.data.glob("*/val"))
    fmt = recipe.bundle.formats[0]  # the primary file an app loads first
    plan = session_plan(eval_runtime(recipe.runtime), ort_format=fmt == "ort")
    agree = ProfileAgreement(folder / f"model.{fmt}", plan, inputs, text_of, ctc.layout,
                             measured_profiles(profiles, final), label)  # fmt: skip
    chosen = conformance_vectors.choose(
        read_sets(where.data, sources, "val"),
        shipped=shipped,
        reference=lambda png: run(reference, preprocess(png, recipe.preprocess)),
        layout=ctc.layout,
        scoring=contract.scoring,
        count=recipe.bundle.conformance,
        agree=agree if agree.profiles else None,
    )
    if not chosen:
        raise ModelError(f"no validation images under {where.data} for {sources} that every "
                         f"profile of {label} reads alike: none to make conformance vectors "
                         "from")  # fmt: skip
    record, pngs = conformance_vectors.vectors(chosen, agree.measured(chosen))
    shown = ", ".join(f"{k} {v:g}" for k, v in record.measured.items()) or "none emulable"
    print(f"{label}: {len(chosen)} vectors, tolerance {record.tolerance:g} (profiles: {shown})")
    for name, data in pngs.items():
        write_bytes(folder / name, data)
    write_json(folder / CONFORMANCE, record.as_dict())


def write_bundle(
    target: str,
    build_dir: Path,
    builds_root: Path,
    source_dir: Path,
    contract: Contract,
    recipe: Recipe,
    eval_json: Path | None,
    out_dir: Path,
    data: Path,
    profiles: dict[str, CpuProfile] | None = None,
) -> dict[str, Any]:
    """Write bundles/<C> atomically; returns the manifest. `profiles`: the class's CPU
    profiles, which the conformance vectors' tolerance is measured on."""
    final = modelio.load(build_dir / "model.onnx")
    fallback = resolve_fallback(
        recipe.bundle.fallback, modelio.spec(final), build_dir, builds_root, source_dir
    )
    evaluation = read_record(eval_json, EvalRecord) if eval_json is not None else None
    where = VectorSources(data, decided_on(build_dir), build_dir, source_dir)
    inputs = input_spec(final, contract, recipe)  # a contract misfit fails before any work
    with atomic_dir(out_dir) as tmp:
        _fill(tmp, build_dir, final, fallback, recipe)
        add_conformance(tmp, recipe, contract, where, profiles or {}, f"bundle@{target}")
        _drop_unshipped(tmp, recipe.bundle.formats)
        doc = manifest(
            target=target,
            final=final,
            contract=contract,
            recipe=recipe,
            fallback=fallback,
            files=file_table(tmp),
            source=json.loads((source_dir / "source.json").read_text()),
            metrics=metrics_summary(evaluation, fallback) if evaluation else None,
            inputs=inputs,
        )
        write_json(tmp / MANIFEST, doc)
        self_check(tmp, recipe.bundle.formats, recipe.preprocess, fallback is not None)
    return doc


def _drop_unshipped(folder: Path, formats: list[str]) -> None:
    """The .onnx files the vectors were computed from, when the bundle ships only .ort."""
    if "onnx" not in formats:
        for path in folder.glob("*.onnx"):
            path.unlink()


def _fill(
    tmp: Path,
    build_dir: Path,
    final: onnx.ModelProto,
    fallback: FallbackChoice | None,
    recipe: Recipe,
) -> None:
    formats, graph = recipe.bundle.formats, recipe.bundle.preprocess == "graph"
    if graph:  # the models take pixels: the recipe's preprocessing becomes their first ops
        from .pixel_graph import attach  # graph building, only for pixel-feed bundles

        modelio.save(attach(final, recipe.preprocess), tmp / "model.onnx")
    else:
        shutil.copyfile(build_dir / "model.onnx", tmp / "model.onnx")
    names = ["model"]
    if fallback is not None:
        names.append("fallback")
        if graph:
            modelio.save(attach(fallback.model, recipe.preprocess), tmp / "fallback.onnx")
        elif fallback.derived or fallback.path is None:
            modelio.save(fallback.model, tmp / "fallback.onnx")
        else:  # a byte copy, so its hash matches the build's (or the source's) file
            shutil.copyfile(fallback.path, tmp / "fallback.onnx")
    if "ort" in formats:
        convert_to_ort(tmp, names)
    write_json(tmp / "charset.json", modelio.spec(final).charset)


def sign_bundle(folder: Path, private_key_pem: bytes) -> None:
    """Write manifest.sig: the Ed25519 signature of manifest.json's exact bytes, after checking
    that every file the manifest lists is there with its hash (a tampered folder must never
    get a valid signature)."""
    from ocr_bundles_runtime.manifest import parse_bundle, read_verified

    spec = parse_bundle(folder)
    for name in spec.manifest.files:
        if (folder / name).exists() or name not in spec.manifest.optional:
            read_verified(folder, spec.manifest, name)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"signing key: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise PipelineError(f"signing key is {type(key).__name__}, not Ed25519")
    write_bytes(folder / SIGNATURE, key.sign((folder / MANIFEST).read_bytes()))
