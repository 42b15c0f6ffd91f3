"""The bundle stage: everything an app needs to recognize captchas, in one self-checking folder.

build/<C>/bundle/
  model.onnx                the build's final model
  fallback.onnx             a float model with the same charset (see `choose_fallback`)
  model.ort, fallback.ort   onnxruntime's mobile format (recipe bundle.ort_format)
  required_operators.config the operators both .ort models use, for a minimal onnxruntime build
  charset.json              class index -> string
  manifest.json             input spec, preprocessing, session settings, CTC contract,
                            confidence threshold, SHA-256 of every file, provenance, metrics

`stages.runtime.Recognizer` needs only this folder. The core functions are pure; `write_bundle`
does the I/O and writes atomically (temp folder, self-check with the runtime, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import modelio
from .errors import ModelError, PipelineError
from .preprocess import MIN_WIDTH, Preprocess
from .recipe import Recipe
from .runtime import FORMAT, FORMAT_VERSION, Recognizer

log = logging.getLogger(__name__)

# ops only a quantizer emits; their presence means the model is not a float model
QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "QAttention",
        "QGemm",
    }
)
QUANT_PREFIXES = ("QLinear", "DynamicQuantize")
# half-precision weights lose accuracy too; the fallback exists to be the most accurate model
HALF_TYPES = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
ORT_CONFIG = "required_operators.config"


@dataclass(frozen=True)
class FallbackChoice:
    model: onnx.ModelProto
    origin: str  # where it came from, e.g. "stages/02-prune_charset.onnx" or "source"
    is_float: bool
    derived: bool  # pruned here to the final charset; otherwise a byte copy of `origin`


def is_float(model: onnx.ModelProto) -> bool:
    """No quantization op and no half-precision initializer."""
    ops = {n.op_type for n in model.graph.node}
    if ops & QUANT_OPS or any(op.startswith(QUANT_PREFIXES) for op in ops):
        return False
    return not any(t.data_type in HALF_TYPES for t in model.graph.initializer)


def choose_fallback(
    final: modelio.CtcSpec, candidates: Iterable[tuple[str, onnx.ModelProto]]
) -> FallbackChoice:
    """The model the runtime retries with when the primary is unsure or cannot load.

    `candidates` come most-preferred first: the build's stage models from the latest to the
    earliest, then the source model. The rule:
      1. the first float candidate whose charset equals the final model's;
      2. else (the charset was pruned after the last float stage, e.g. quantize then prune) the
         first float candidate, pruned here with `prune_charset` to the final charset;
      3. else (no float model at all: the source was already int8) the source, pruned if needed.
    The fallback must share the final charset because the bundle carries one charset.json and
    the runtime compares both models' texts and confidences class for class. A float final
    model is its own fallback (rule 1 picks its stage file): a second copy survives corruption
    of model.onnx, and the runtime skips the pointless low-confidence rerun on identical bytes.
    """
    first_float: tuple[str, onnx.ModelProto] | None = None
    last: tuple[str, onnx.ModelProto] | None = None
    for origin, model in candidates:
        floating = is_float(model)
        if floating and modelio.spec(model).charset == final.charset:
            return FallbackChoice(model, origin, True, False)
        if floating and first_float is None:
            first_float = (origin, model)
        last = (origin, model)
    base = first_float or last
    if base is None:
        raise ModelError("no candidate model for the fallback (no stage models, no source)")
    origin, model = base
    if modelio.spec(model).charset == final.charset:
        return FallbackChoice(model, origin, first_float is not None, False)
    return FallbackChoice(prune_to(model, final, origin), origin, first_float is not None, True)


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
            "(different class order or multi-character classes); add a float stage after "
            "prune_charset in the recipe, e.g. put prune_charset before quantization"
        )
    return out


def input_spec(model: onnx.ModelProto, pre: Preprocess) -> dict[str, Any]:
    """Name, [1, C, H, "width"] shape and dtype; fixed dims the model declares must agree."""
    tensor = model.graph.input[0]
    ttype = tensor.type.tensor_type
    declared = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    expected = [1, pre.channels, pre.height, None]
    if len(declared) != 4 or any(
        d is not None and e is not None and d != e for d, e in zip(declared, expected, strict=True)
    ):
        raise ModelError(
            f"model input '{tensor.name}' is declared {declared} but the recipe's preprocessing "
            f"feeds [1, {pre.channels}, {pre.height}, width]; fix preprocess.height/channels"
        )
    return {
        "name": tensor.name,
        "shape": [1, pre.channels, pre.height, "width"],
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name,
        "min_width": MIN_WIDTH,
    }


def recipe_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of `recipe.resolved()`."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def metrics_summary(evaluation: dict[str, Any], fallback: FallbackChoice) -> dict[str, Any]:
    """The eval.json figures an app owner looks at; the fallback's when it is a stage's bytes."""
    try:
        variants = evaluation["variants"]
        final, ref = variants["final"], variants["reference"]
        out: dict[str, Any] = {
            "images": evaluation["images"],
            "final": {k: final[k] for k in ("accuracy", "cer", "size_mb", "model_p50_ms")},
            "reference": {k: ref[k] for k in ("accuracy", "cer")},
        }
    except (KeyError, TypeError) as e:
        raise PipelineError(f"eval.json: missing {e}; rerun the evaluate stage") from e
    fb = variants.get(Path(fallback.origin).stem)
    if fb is not None and fallback.origin.startswith("stages/") and not fallback.derived:
        out["fallback"] = {k: fb[k] for k in ("accuracy", "cer")}
    return out


def manifest(
    *,
    target: str,
    final: onnx.ModelProto,
    recipe: Recipe,
    fallback: FallbackChoice,
    files: dict[str, dict[str, Any]],
    source: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest.json document (see the module docstring for the folder it describes)."""
    ctc = modelio.spec(final)
    ort_files = "model.ort" in files
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "target": target,
        "input": input_spec(final, recipe.preprocess),
        "output": {"name": ctc.output_name, "classes": len(ctc.charset)},
        "preprocess": recipe.preprocess.as_dict(),
        "runtime": {**recipe.runtime.as_dict(), "providers": list(recipe.runtime.providers)},
        "ctc": {"layout": ctc.layout, "blank": ctc.blank},
        "confidence_threshold": recipe.bundle.confidence_threshold,
        "charset": "charset.json",
        "models": {
            "primary": {"onnx": "model.onnx", "ort": "model.ort" if ort_files else None},
            "fallback": {
                "onnx": "fallback.onnx",
                "ort": "fallback.ort" if ort_files else None,
                "origin": fallback.origin,
                "float": fallback.is_float,
                "pruned_here": fallback.derived,
            },
        },
        "ort_format": {"config": ORT_CONFIG, "optimization": "all"} if ort_files else None,
        "files": files,
        "source": source,
        "recipe_sha256": recipe_hash(recipe.resolved()),
        "versions": {"onnxruntime": metadata.version("onnxruntime")},
        "metrics": metrics,
    }


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"sha256": modelio.sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }


def stage_candidates(build_dir: Path, source_dir: Path) -> Iterator[tuple[str, onnx.ModelProto]]:
    """Stage models latest first, then the source; loaded one at a time (each may be 50+ MB)."""
    for path in sorted((build_dir / "stages").glob("[0-9][0-9]-*.onnx"), reverse=True):
        yield f"stages/{path.name}", modelio.load(path)
    yield "source", modelio.load(source_dir / "model.onnx")


def convert_to_ort(folder: Path) -> None:
    """model.ort, fallback.ort and required_operators.config next to the .onnx files.

    onnxruntime's converter applies the 'all' optimizations without the x86-only NCHWc layout,
    so the .ort files run on ARM phones too; it prints progress, which goes to the debug log.
    """
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    ort.set_default_logger_severity(3)  # ddddocr's wrong declared output shape warns per model
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            convert_onnx_models_to_ort(
                folder, output_dir=folder, optimization_styles=[OptimizationStyle.Fixed]
            )
    except Exception as e:  # the converter raises onnxruntime's own exception types
        raise ModelError(
            f"converting to .ort failed ({type(e).__name__}: {e}); set bundle.ort_format: false "
            f"to ship only .onnx. Converter output:\n{printed.getvalue()[-2000:]}"
        ) from e
    log.debug("ort converter: %s", printed.getvalue())
    config = folder / ORT_CONFIG
    # the converter names the models by absolute path; keep the file the same on every machine
    config.write_text(config.read_text().replace(f"{folder.resolve()}/", ""))


def self_check(folder: Path, with_ort: bool, pre: Preprocess) -> None:
    """Load the bundle exactly as an app would and run one blank image through both models."""
    blank = np.full((pre.height, pre.height * 4), 255, np.uint8)
    for prefer_ort in (False, True) if with_ort else (False,):
        rec = Recognizer.from_bundle(folder, prefer_ort=prefer_ort)
        rec.predict(blank)
        if rec.model != "primary" or not rec.load_fallback():
            raise ModelError(f"the written bundle does not load cleanly: {rec.events}")


def write_bundle(
    target: str,
    build_dir: Path,
    source_dir: Path,
    recipe: Recipe,
    eval_json: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Write build/<C>/bundle atomically; returns the manifest."""
    built = json.loads((build_dir / "recipe.json").read_text())["recipe"]
    if recipe_hash(built) != recipe_hash(recipe.resolved()):
        raise PipelineError(
            f"{build_dir} was built from a different recipe than configs/{target}.yaml now "
            f"gives; rebuild it first (dvc repro build@{target})"
        )
    final = modelio.load(build_dir / "model.onnx")
    fallback = choose_fallback(modelio.spec(final), stage_candidates(build_dir, source_dir))
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _fill(tmp, build_dir, source_dir, final, fallback, recipe.bundle.ort_format)
        evaluation = json.loads(eval_json.read_text()) if eval_json is not None else None
        doc = manifest(
            target=target,
            final=final,
            recipe=recipe,
            fallback=fallback,
            files=file_table(tmp),
            source=json.loads((source_dir / "source.json").read_text()),
            metrics=metrics_summary(evaluation, fallback) if evaluation else None,
        )
        modelio.write_json(tmp / "manifest.json", doc)
        for path in tmp.iterdir():
            path.chmod(0o644)  # temp files are created 0600; an app may run as another user
        self_check(tmp, recipe.bundle.ort_format, recipe.preprocess)
        modelio.swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


def _fill(
    tmp: Path,
    build_dir: Path,
    source_dir: Path,
    final: onnx.ModelProto,
    fallback: FallbackChoice,
    ort_format: bool,
) -> None:
    tmp.mkdir(parents=True)
    shutil.copyfile(build_dir / "model.onnx", tmp / "model.onnx")
    if fallback.derived:
        modelio.save(fallback.model, tmp / "fallback.onnx")
    else:  # a byte copy, so its hash matches the build's (or the source's) file
        origin = source_dir / "model.onnx" if fallback.origin == "source" else None
        shutil.copyfile(origin or build_dir / fallback.origin, tmp / "fallback.onnx")
    if ort_format:
        convert_to_ort(tmp)
    modelio.write_json(tmp / "charset.json", modelio.spec(final).charset)
