"""The baselines stage (shared by every class, runs once): what a user gets without this pipeline.

- stock:         what users run today. ddddocr source: `DdddOcr(beta=True)` (common.onnx; plain
                 `DdddOcr()` for ddddocr_model old). File source: the source model run with its
                 own declared contract by plain onnxruntime.
- stock_default: ddddocr source only: `DdddOcr()` (common_old.onnx, already int8); for other
                 sources Params.applicable_baselines leaves it out.
- naive_int8:    onnxruntime `quantize_dynamic` with default arguments on the source model (after
                 lift_constants when its weights are Constant nodes), fed by the contract.

Writes <out>/accuracy.json (records.BaselinesRecord): accuracy, CER and agreement with the
reference per evaluation set, and <out>/reference.json (records.ReferenceTexts): the reference
model's texts, which every class's evaluate reuses. Both are small and committed, so a fresh
clone keeps them. naive_int8 is built in a temporary folder, here and again by the bench that
times it (seconds, the same bytes: `quantize_dynamic` has no data to vary).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from importlib import metadata, resources
from pathlib import Path

import onnx

from ocr_bundles_runtime.session import Runtime

from . import modelio
from .atomic import atomic_dir
from .contract import Contract
from .evaluate import EvalSets, eval_runtime, score_sets
from .passes._ort_quant import dropping_logs
from .progress import Progress
from .records import BaselinesRecord, ReferenceTexts, VariantEval, write_record

NAIVE_FILE = "naive_int8.onnx"
ACCURACY_FILE = "accuracy.json"
REFERENCE_FILE = "reference.json"
# stock variant -> (DdddOcr(beta=...), the model file it loads from the ddddocr package)
DDDDOCR: dict[str, tuple[bool, str]] = {
    "beta": (True, "common.onnx"),
    "old": (False, "common_old.onnx"),
}


def stock_kind(name: str, source: dict) -> str | None:
    """The ddddocr model a stock baseline runs ("beta" | "old"), or None for the source model
    run by onnxruntime (file sources)."""
    if source.get("package") != "ddddocr":
        if name == "stock_default":  # Params.applicable_baselines drops it: never relabel
            raise ValueError("stock_default needs the ddddocr source; pass applicable baselines")
        return None
    if name == "stock_default":
        return "old"
    return "beta" if source.get("file") == "common.onnx" else "old"


def stock_label(source: dict) -> str:
    if source.get("package") == "ddddocr":
        beta = source.get("file") == "common.onnx"
        call = "DdddOcr(beta=True)" if beta else "DdddOcr()"
        return f"ddddocr {metadata.version('ddddocr')} {call} ({source.get('file')})"
    return f"the source model ({Path(source.get('file', '?')).name}) fed by its declared contract"


def stock_model_file(kind: str) -> Path:
    return Path(str(resources.files("ddddocr") / DDDDOCR[kind][1]))


def naive_int8(source: Path, dest: Path) -> None:
    """`quantize_dynamic(source, dest)` with every argument left at its default (on lifted
    weights: the quantizer cannot see Constant-node weights at all)."""
    from onnxruntime.quantization import quantize_dynamic

    model = modelio.load(source)
    if modelio.constant_weights(model):
        from .passes.lift_constants import LiftConstantsOptions, lift_constants
        from .registry import PassContext

        model = lift_constants(model, LiftConstantsOptions(), PassContext())
    ctc = modelio.spec(model)
    model.graph.output[0].type.tensor_type.ClearField("shape")  # ddddocr declares [1, seqlen]
    with tempfile.TemporaryDirectory(prefix="naive-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(fp32))
        # the quantizer prints progress on stdout (the stage's own report channel) and advice
        # to pre-process on the log: defaults on purpose, so neither is shown
        with contextlib.redirect_stdout(io.StringIO()), dropping_logs("pre-process"):
            quantize_dynamic(fp32, int8)
        quantized = modelio.load(int8)
    # keep the CTC contract even if a quantizer version drops metadata_props
    spec = (ctc.charset, ctc.layout, ctc.blank, ctc.kind)
    modelio.save(modelio.with_spec(quantized, *spec), dest)


def stock_predictions(kind: str, sets: EvalSets) -> dict[str, list[str]]:
    import ddddocr

    ocr = ddddocr.DdddOcr(beta=DDDDOCR[kind][0], show_ad=False)
    bar = Progress(f"baselines: ddddocr {kind}", sum(sets.sizes.values()))
    out = {}
    for name, paths in sets.images.items():
        out[name] = []
        for p in paths:
            out[name].append(str(ocr.classification(p.read_bytes())))
            bar.step()
    bar.close()
    return out


def build_baselines(
    source_dir: Path,
    origin: dict,
    contract: Contract,
    sets: EvalSets,
    out: Path,
    include: list[str],
) -> BaselinesRecord:
    """Score the included baselines (naive_int8 built on the way) on every evaluation set;
    written atomically into `out`."""
    rt = eval_runtime(Runtime())
    model = source_dir / "model.onnx"
    ref = sets.predict(model, contract.input, rt, "baselines: reference")
    variants: dict[str, VariantEval] = {}
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="naive-int8-") as naive:
        for name in include:
            if name == "naive_int8":
                path = Path(naive) / NAIVE_FILE
                naive_int8(model, path)
                preds = sets.predict(path, contract.input, rt, "baselines: naive_int8")
            elif (kind := stock_kind(name, origin)) is not None:
                path = stock_model_file(kind)
                preds = stock_predictions(kind, sets)
            else:  # a file source's stock is its model as declared: the reference itself
                path, preds = model, ref
            variants[name] = VariantEval(
                file=path.name,
                size_mb=round(modelio.size_mb(path), 3),
                sets=score_sets(preds, sets.labels, ref, contract.scoring),
            )
        record = BaselinesRecord(stock=stock_label(origin), sets=sets.sizes, variants=variants)
        write_record(tmp / ACCURACY_FILE, record)
        texts = ReferenceTexts(
            preprocess=contract.input.as_dict(),
            images=sets.names,
            texts=ref,
        )
        write_record(tmp / REFERENCE_FILE, texts)
    return record
