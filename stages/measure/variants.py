"""The bench's variants, each with its worker spec fields.

Variants: the baselines (stock, stock_default, naive_int8), reference, every stage, final, the
bundle (fallback loaded only when an image needs it) and the bundle with its fallback loaded,
the shipped model under each session memory setting flipped, and one runtime floor per
process kind (our runner, ddddocr, the bundle runtime) for the attributable figures. Deployable
variants also get one long-session run (`bench.long_session` calls) for their memory growth.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocr_bundles_runtime.manifest import sizes_mb

from .. import modelio
from ..baselines import NAIVE_FILE, naive_int8, stock_kind, stock_model_file
from ..contract import Contract
from ..recipe import Recipe
from ..records import BUILD_FILE, BuildRecord, read_record
from . import floor as floors

FLOORS = {"onnx": "runtime_floor", "stock": "runtime_floor_stock", "bundle": "runtime_floor_bundle"}


@dataclass(frozen=True)
class BenchInputs:
    """Every path the stage reads, from its command line."""

    target: str
    source: Path  # models/source
    build: Path  # build/<C>/model
    eval_json: Path
    bundle: Path
    baselines: Path
    data: Path
    sets: list[str]
    verify: Path  # verify/<C>.json: what each CPU profile of the class reads
    clients: Path  # verify/clients/<C>.json: the reference clients on this machine


@dataclass(frozen=True)
class Variant:
    """One thing to time: `worker` holds its kind-specific worker spec fields."""

    name: str
    kind: str  # onnx | stock | bundle
    size_mb: float | None
    worker: dict[str, Any] = field(default_factory=dict)
    long_session: bool = False  # deployable: gets a long-session memory run
    floor: str | None = None  # the runtime floor of its process kind
    skipped: str | None = None  # why it is not measured
    record: dict[str, Any] = field(default_factory=dict)  # extra fields for its VariantMetrics


def _onnx(name: str, path: Path, pre: Any, rt: Any, **kw: Any) -> Variant:
    spec = {"model": str(path.resolve()), "preprocess": pre.as_dict(), "runtime": rt.as_dict()}
    return Variant(name, "onnx", round(modelio.size_mb(path), 3), spec, floor=FLOORS["onnx"], **kw)


def baseline_variants(
    inputs: BenchInputs, recipe: Recipe, contract: Contract, include: list[str], work: Path
) -> list[Variant]:
    """stock (ddddocr, or a file source's model as declared) and naive_int8, built into `work`
    (it lives as long as the bench's timing: the baselines stage keeps no model)."""
    origin = json.loads((inputs.source / "source.json").read_text())
    out = []
    threads = dataclasses.replace(recipe.runtime, providers=("CPUExecutionProvider",))
    for name in include:
        if name == "naive_int8":
            naive_int8(inputs.source / "model.onnx", work / NAIVE_FILE)
            out.append(_onnx(name, work / NAIVE_FILE, contract.input, threads))
            continue
        kind = stock_kind(name, origin)
        if kind is None:  # a file source's stock: its model as declared, plain onnxruntime
            plain = type(recipe.runtime)(intra_op_threads=recipe.runtime.intra_op_threads)
            out.append(
                _onnx(name, inputs.source / "model.onnx", contract.input, plain, long_session=True)
            )
            continue

        size = round(modelio.size_mb(stock_model_file(kind)), 3)
        # one stock long session is the comparison; the int8 default is not what we replace
        long = name == "stock"
        out.append(Variant(name, "stock", size, {"stock": kind}, long, FLOORS["stock"]))
    return out


def pipeline_variants(inputs: BenchInputs, recipe: Recipe, contract: Contract) -> list[Variant]:
    """reference, every stage model and final (our runner), then the bundle two ways."""
    rt, pre = recipe.runtime, recipe.preprocess
    out = [_onnx("reference", inputs.source / "model.onnx", contract.input, rt)]
    for st in read_record(inputs.build / BUILD_FILE, BuildRecord).stages:
        out.append(_onnx(st.stem, inputs.build / st.file, pre, rt))
    # memory growth is measured on what ships (the bundle), not on final: same model, and a
    # long session costs 5000 recognitions of build time
    out.append(_onnx("final", inputs.build / "model.onnx", pre, rt))
    manifest = json.loads((inputs.bundle / "manifest.json").read_text())
    sizes = sizes_mb(inputs.bundle, manifest)
    spec = {"bundle": str(inputs.bundle.resolve())}
    bundle = Variant("bundle", "bundle", sizes["ships_mb"], spec, True, FLOORS["bundle"])
    out.append(dataclasses.replace(bundle, record=sizes))
    if "fallback" in manifest["models"]:
        total = round(sizes["ships_mb"] + sizes["optional_mb"], 3)
        with_fb = {**spec, "load_fallback": True}
        out.append(
            dataclasses.replace(bundle, name="bundle+fallback", size_mb=total, worker=with_fb)
        )
    return out


def memory_variants(inputs: BenchInputs, recipe: Recipe) -> list[Variant]:
    """The shipped primary file under the recipe's session memory settings, then with each
    setting flipped: what each one saves or costs, measured, not assumed."""
    manifest = json.loads((inputs.bundle / "manifest.json").read_text())
    fmt = manifest["formats"][0]
    path = inputs.bundle / manifest["models"]["primary"]["files"][fmt]
    rt, pre = recipe.runtime, recipe.preprocess
    flips = ["enable_cpu_mem_arena", "enable_mem_pattern"]
    if fmt == "ort":
        flips.append("ort_bytes_for_initializers")
    out = [_onnx("mem:recipe", path, pre, rt)]  # its growth: the bundle's long session
    for name in flips:
        flipped = dataclasses.replace(rt, **{name: not getattr(rt, name)})
        label = f"mem:{name}={'on' if getattr(flipped, name) else 'off'}"
        # the arena decides whether resident memory grows over a session: measure it there
        out.append(_onnx(label, path, pre, flipped, long_session=name == "enable_cpu_mem_arena"))
    return out


def floor_variants(
    inputs: BenchInputs, recipe: Recipe, contract: Contract, kinds: set[str], tmp: Path
) -> list[Variant]:
    """One runtime floor per process kind in use: the same process around a do-nothing model."""
    final = modelio.spec(modelio.load(inputs.build / "model.onnx"))
    out = []
    if "onnx" in kinds:
        path = tmp / "runtime_floor.onnx"
        modelio.save(floors.floor_model(final, recipe.preprocess), path)
        out.append(
            _onnx(FLOORS["onnx"], path, recipe.preprocess, recipe.runtime, long_session=True)
        )
    if "stock" in kinds:
        out.append(stock_floor(contract, tmp))
    if "bundle" in kinds:
        folder = tmp / "floor_bundle"
        manifest = json.loads((inputs.bundle / "manifest.json").read_text())
        floors.write_floor_bundle(folder, floors.floor_model(final, recipe.preprocess), manifest)
        spec = {"bundle": str(folder)}
        out.append(Variant(FLOORS["bundle"], "bundle", None, spec, True, FLOORS["bundle"]))
    return out


def stock_floor(contract: Contract, tmp: Path) -> Variant:
    """ddddocr's own process (its imports, its preprocessing) loading a do-nothing model
    through its custom-model API."""
    import ddddocr.charsets as cs

    charset = list(cs.CHARSET_BETA)
    spec = modelio.CtcSpec("x", "logits", charset, "TBC", 0)
    path = tmp / "runtime_floor_stock.onnx"
    modelio.save(floors.floor_model(spec, contract.input), path)
    charsets = tmp / "runtime_floor_stock.json"
    charsets.write_text(
        json.dumps({"charset": charset, "word": False, "image": [-1, 64], "channel": 1})
    )
    worker = {"model": str(path), "charsets": str(charsets)}
    return Variant(FLOORS["stock"], "stock", None, worker, True, FLOORS["stock"])
