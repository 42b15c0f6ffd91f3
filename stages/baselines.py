"""The baselines stage (shared by every class, runs once): what a user gets without this pipeline.

- stock_beta:    `ddddocr.DdddOcr(beta=True, show_ad=False).classification(png_bytes)` (common.onnx)
- stock_default: `ddddocr.DdddOcr(show_ad=False)` (common_old.onnx, already int8)
- naive_int8:    onnxruntime `quantize_dynamic` with default arguments on the source model, fed by
                 our preprocessing (the pipeline default = ddddocr's) and CTC decode

Writes <out>/naive_int8.onnx and <out>/accuracy.json (accuracy, cer, by_length, agreement with
the reference model's predictions, size_mb) for the bench and report stages.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import onnx

from . import modelio
from .data import read_split
from .evaluate import agreement, evaluate_model, predict, score
from .inference import Runtime
from .preprocess import Preprocess, preprocess_all

Baseline = Literal["stock_beta", "stock_default", "naive_int8"]
BASELINES: tuple[Baseline, ...] = ("stock_beta", "stock_default", "naive_int8")
# stock variant -> (DdddOcr(beta=...), the model file it loads from the ddddocr package)
STOCK: dict[str, tuple[bool, str]] = {
    "stock_beta": (True, "common.onnx"),
    "stock_default": (False, "common_old.onnx"),
}
NAIVE_FILE = "naive_int8.onnx"
ACCURACY_FILE = "accuracy.json"


def stock_model_file(name: str) -> Path:
    """The onnx file inside the installed ddddocr package that a stock variant loads."""
    return Path(str(resources.files("ddddocr") / STOCK[name][1]))


def clear_output_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with output 0's declared shape removed: ddddocr declares [1, seqlen] for a
    [T, 1, C] tensor, and onnxruntime's shape inference inside quantize_dynamic rejects that."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output[0].type.tensor_type.ClearField("shape")
    return out


def naive_int8(source: Path, dest: Path) -> None:
    """`quantize_dynamic(source, dest)` with every argument left at its default."""
    from onnxruntime.quantization import quantize_dynamic

    model = clear_output_shape(modelio.load(source))
    ctc = modelio.spec(model)
    with tempfile.TemporaryDirectory(prefix="naive-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(fp32))
        # the quantizer prints progress on stdout, which is the stage's own report channel
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(fp32, int8)
        quantized = modelio.load(int8)
    # keep the CTC contract even if a quantizer version drops metadata_props
    modelio.save(modelio.with_spec(quantized, ctc.charset, ctc.layout, ctc.blank), dest)


def stock_predictions(name: str, images: list[Path]) -> list[str]:
    import ddddocr

    ocr = ddddocr.DdddOcr(beta=STOCK[name][0], show_ad=False)
    return [str(ocr.classification(p.read_bytes())) for p in images]


def stock_scores(
    name: str, images: list[Path], labels: list[str], ref_preds: list[str]
) -> dict[str, Any]:
    preds = stock_predictions(name, images)
    return {
        "size_mb": round(modelio.size_mb(stock_model_file(name)), 3),
        **score(preds, labels),
        "agreement": agreement(preds, ref_preds),
    }


def build_baselines(
    source: Path,
    data: Path,
    out: Path,
    reference: Preprocess,
    runtime: Runtime,
    include: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """Build naive_int8 and score the included baselines on the evaluation set; written
    atomically into `out` (a temp folder renamed into place). Returns accuracy.json's data."""
    unknown = sorted(set(include) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    items = read_split(data / "eval")
    images, labels = [p for p, _ in items], [t for _, t in items]
    xs = preprocess_all(images, reference)
    ref_preds, _ = predict(source / "model.onnx", xs, runtime)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        variants: dict[str, Any] = {}
        for name in include:
            if name == "naive_int8":
                naive_int8(source / "model.onnx", tmp / NAIVE_FILE)
                variants[name], _ = evaluate_model(tmp / NAIVE_FILE, xs, labels, ref_preds, runtime)
            else:
                variants[name] = stock_scores(name, images, labels, ref_preds)
        result = {"images": len(items), "preprocess": reference.as_dict(), "variants": variants}
        modelio.write_json(tmp / ACCURACY_FILE, result)
        modelio.swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
