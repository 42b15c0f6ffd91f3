"""The pipeline's real writers on tiny models: a source folder, data sources, a build, its
evaluation and its bundle, in a temp folder, in seconds. Tests of later stages build their
inputs with these, never by fabricating a record's shape.

    root = tmp_path
    src = write_source(root)                    # root/models/source
    write_data(root)                            # root/data/{clean,hard}/{calib,val,eval}
    build = build_class(root, "low", [{"fix_output_shape": {}}])   # root/build/low/model
    evaluate_class(root, "low")                 # root/build/low/eval.json
    bundle = bundle_class(root, "low")          # root/bundles/low
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import tiny

import stages.passes  # noqa: F401 - registers the passes recipes name
from ocr_bundles_runtime.manifest_record import OutputSpec
from ocr_bundles_runtime.preprocess import Preprocess
from stages import modelio
from stages.build import read_build_contract, read_recipe, run_passes, write_build
from stages.bundle import write_bundle
from stages.contract import Contract, ModelParams, read_contract
from stages.data import clean
from stages.data.dataset import SPLITS, Sample, image_name, read_sets, write_split
from stages.decision_data import pass_context
from stages.evaluate import EvalSets, evaluate_build
from stages.recipe import Recipe, load_recipe
from stages.records import write_record
from stages.scoring import Scoring
from stages.source import probe
from stages.source import write_source as _write_source
from stages.yamlio import merge

TINY_INPUT = Preprocess(height=tiny.HEIGHT, interpolation="bilinear")
STYLE = clean.CaptchaStyle(width=48, height=16, alphabet="abcdef", font_size=(12, 14))
SIZES = {"calib": 6, "val": 8, "eval": 10}
RECIPE: dict[str, Any] = {
    "description": "tiny test class",
    "runtime": {"intra_op_threads": 1},
    "equivalence": {"images": 4},
    "bundle": {"formats": ["onnx"], "fallback": "none"},
}


def write_source(
    root: Path,
    model: onnx.ModelProto | None = None,
    input_: Preprocess = TINY_INPUT,
    scoring: Scoring | None = None,
) -> Path:
    """root/models/source from `model` (default: tiny_ctc with a correct output shape), its
    contract probed like the model stage does."""
    model = model or tiny.tiny_ctc(wrong_output_shape=False)
    spec = modelio.spec(model)
    params = ModelParams(input=input_, scoring=scoring or Scoring())
    params.output.layout = spec.layout
    params.output.kind = spec.kind  # type: ignore[assignment]
    contract = probe(model, params, spec.blank, len(spec.charset), "tiny")
    out = root / "models" / "source"
    _write_source(out, model, contract, spec.charset, {"file": "tiny.onnx", "sha256": "0" * 64})
    return out


def contract_of(model: onnx.ModelProto, input_: Preprocess = TINY_INPUT) -> Contract:
    """The contract the model stage writes for `model`, without running it (batch: no)."""
    spec = modelio.spec(model)
    output = OutputSpec(spec.output_name, len(spec.charset), spec.layout, spec.blank, spec.kind)  # type: ignore[arg-type]
    return Contract(
        input=input_, input_name=spec.input_name, batch=False, output=output, scoring=Scoring()
    )


def write_data(
    root: Path, sources: tuple[str, ...] = ("clean", "hard"), sizes: dict[str, int] = SIZES
) -> Path:
    """root/data/<source>/{calib,val,eval}: small clean-style captchas (a different seed per
    source), enough to drive every stage."""
    for k, name in enumerate(sources):
        for s, split in enumerate(SPLITS):
            samples = [
                Sample(image_name(i), *clean.sample(STYLE, 100 * k + s, i))
                for i in range(sizes[split])
            ]
            write_split(root / "data" / name / split, samples)
    return root / "data"


def recipe(passes: list[dict[str, Any]], **fields: Any) -> Recipe:
    """A validated recipe from plain data, merged onto RECIPE and the tiny input contract."""
    raw = merge({"preprocess": TINY_INPUT.as_dict(), **RECIPE}, fields)
    return Recipe.from_resolved({**raw, "passes": passes}, "test recipe")


def context(root: Path, rec: Recipe, sources: tuple[str, ...] = ("clean", "hard")):
    """The PassContext the build verb would make from root/data (without the readability
    check: the tiny model reads no captcha)."""
    return pass_context(root / "data", list(sources), rec, "abcdef", Scoring())


def build_class(
    root: Path,
    target: str,
    passes: list[dict[str, Any]],
    sources: tuple[str, ...] = ("clean", "hard"),
    **fields: Any,
) -> Path:
    """root/build/<target>/model from the source folder and data, by the real build code."""
    rec = recipe(passes, **fields)
    model = modelio.load(root / "models" / "source" / "model.onnx")
    results = run_passes(model, rec, context(root, rec, sources))
    out = root / "build" / target / "model"
    write_build(out, rec, results, target, contract=read_contract(root / "models" / "source"))
    return out


def evaluate_class(
    root: Path, target: str, sources: tuple[str, ...] = ("clean", "hard"), exact_check: int = 0
) -> Path:
    src = root / "models" / "source"
    build = root / "build" / target / "model"
    contract = read_build_contract(build)
    rec = read_recipe(build)
    sets = EvalSets(read_sets(root / "data", list(sources), "eval"))
    record = evaluate_build(
        target, src, build, sets, rec.preprocess, contract.input, contract.scoring, rec.runtime,
        exact_check=exact_check,
    )  # fmt: skip
    out = root / "build" / target / "eval.json"
    write_record(out, record)
    return out


def bundle_class(root: Path, target: str, profiles: dict[str, Any] | None = None) -> Path:
    src = root / "models" / "source"
    build = root / "build" / target / "model"
    out = root / "bundles" / target
    write_bundle(
        target,
        build,
        root / "build",
        src,
        read_build_contract(build),
        read_recipe(build),
        root / "build" / target / "eval.json",
        out,
        root / "data",
        profiles,
    )
    return out


def tiny_bundle(
    root: Path,
    model: onnx.ModelProto | None = None,
    passes: list[dict[str, Any]] | None = None,
    target: str = "tiny",
    profiles: dict[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """The whole chain on a tiny model: source, data, build, evaluation, bundle (conformance
    tolerance measured on `profiles`, CpuProfile by name)."""
    write_source(root, model)
    write_data(root)
    build_class(root, target, passes or [{"fix_output_shape": {}}], **fields)
    evaluate_class(root, target)
    return bundle_class(root, target, profiles)


def contract(root: Path) -> Contract:
    return read_contract(root / "models" / "source")


__all__ = [
    "build_class",
    "bundle_class",
    "context",
    "contract",
    "evaluate_class",
    "load_recipe",
    "recipe",
    "tiny_bundle",
    "write_data",
    "write_source",
]
