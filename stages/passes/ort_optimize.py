"""Apply onnxruntime's graph optimizations offline and keep the optimized graph.

Before: ddddocr's export: Conv -> Sigmoid -> Mul (SiLU) x11, constant shape chains.
After:  level "basic": constants folded, MatMul+Add -> Gemm, Conv+BN fused (standard ops only).
        level "extended": also Sigmoid+Mul -> com.microsoft QuickGelu (11 on ddddocr's model).
        level "all": also Conv -> com.microsoft.nchwc Conv plus ReorderOutput, a blocked memory
        layout whose block size follows the building CPU's vector width (AVX2 vs AVX-512).
Exact: the optimizations are onnxruntime's own, value-preserving rewrites (measured max abs
       difference 6e-6 on ddddocr's logits of magnitude ~25).

Sessions apply these optimizations at every load anyway; baking them in saves that work, but
"extended" and "all" write contrib ops that only onnxruntime runs and that onnx shape
inference cannot type past, so run this last among the graph passes.
onnxruntime also declares nine opset domains in the saved model whether used or not; only
the domains the graph uses are kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from ocr_bundles_runtime.session import quiet_cpu_session

from .. import modelio
from ..errors import PassError
from ..registry import PassContext, register

NAME = "ort_optimize"
REPORT_KEY = f"report.{NAME}"
_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OrtOptimizeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["basic", "extended", "all"] = Field(
        "extended",
        description="onnxruntime optimization level baked in: 'basic' keeps standard ONNX ops; "
        "'extended' adds com.microsoft fused ops (CPU provider); 'all' also writes NCHWc "
        "layout ops whose block size is that of the CPU that built the model, so the file "
        "is fit only for machines like the one it was built on",
    )
    step_down: bool = Field(
        True,
        description="when the graph saved at `level` does not check or run (onnxruntime fuses "
        "LayerNormalization into models older than opset 17, which lack it), try the next "
        "lower level and record why; false fails instead",
    )


@register("ort_optimize", OrtOptimizeOptions, kind="fuse", exact=True)
def ort_optimize(
    model: onnx.ModelProto, options: OrtOptimizeOptions, context: PassContext
) -> onnx.ModelProto:
    """Save onnxruntime's optimized graph at `level` (or the highest lower level that checks)."""
    levels = list(_LEVELS)[: list(_LEVELS).index(options.level) + 1][::-1]
    failed: dict[str, str] = {}
    for level in levels if options.step_down else levels[:1]:
        out = _optimized(model, level, context)
        try:
            _check_loads(out, context)
        except Exception as e:  # the checker and onnxruntime raise their own types
            failed[level] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            continue
        if failed:  # say which level was baked in, and why the higher ones were not
            report = {"level": level, "failed": failed}
            out.metadata_props.add(key=REPORT_KEY, value=json.dumps(report))
        return out
    tried = "; ".join(f"'{lv}': {why}" for lv, why in failed.items())
    raise PassError(
        NAME,
        f"the model onnxruntime saved does not check, load or run at {tried}; "
        + ("drop the pass" if options.step_down else "choose a lower level or set step_down"),
    )


def _optimized(model: onnx.ModelProto, level: str, context: PassContext) -> onnx.ModelProto:
    """onnxruntime's graph optimized at `level`, with the input's metadata."""
    so = _session_options()
    so.graph_optimization_level = _LEVELS[level]
    # onnxruntime only writes the optimized graph to a path
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise PassError(NAME, f"onnxruntime cannot load the input model ({e})") from e
        out = onnx.load(so.optimized_model_filepath)
    # a calibration image the input model itself rejects says nothing about the level
    try:
        _run_first(session, context)
    except Exception as e:
        raise PassError(NAME, f"the input model fails on the first calibration image ({e})") from e
    _drop_unused_domains(out, model)
    modelio.copy_metadata(out, model)
    return out


def _session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the wrong declared output shape of ddddocr's model warns per run
    return so


def _run_first(session: ort.InferenceSession, context: PassContext) -> None:
    for x in context.calibration[:1]:
        session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})


def _drop_unused_domains(out: onnx.ModelProto, original: onnx.ModelProto) -> None:
    used = {n.domain for n in out.graph.node} | {o.domain for o in original.opset_import}
    used |= {"", "ai.onnx"} & {o.domain for o in out.opset_import}
    kept = [o for o in out.opset_import if o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(kept)


def _check_loads(out: onnx.ModelProto, context: PassContext) -> None:
    """onnxruntime's saved graph must pass the checker, load and run one calibration image."""
    onnx.checker.check_model(modelio.checkable(out))
    _run_first(quiet_cpu_session(out.SerializeToString()), context)
