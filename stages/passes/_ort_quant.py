"""What quantize_dynamic and quantize_static share around onnxruntime.quantization.

onnxruntime's quantizers want file paths (given a ModelProto, quantize_static saves it with
external data *in place*, emptying the caller's initializers), print to stdout, warn about
pre-processing, and can emit graphs that onnxruntime itself refuses. These helpers run them on a
private copy in a temp dir and check the result before a pass returns it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType

from ocr_bundles_runtime.session import Runtime, make_session, run

from .. import modelio
from ..errors import PassError
from ..registry import PassContext

QUANT_TYPES: dict[str, QuantType] = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """Op types in `model` that show it has been quantized already."""
    return modelio.quantized_ops(model)


def reject_quantized(pass_name: str, model: onnx.ModelProto) -> None:
    found = quantized_ops(model)
    if found:
        raise PassError(
            pass_name,
            f"the model is already quantized (it has {', '.join(found)} nodes); quantize the "
            "float model instead (e.g. ddddocr's common.onnx, not common_old.onnx)",
        )


def check_node_names(pass_name: str, model: onnx.ModelProto, option: str, names: list[str]) -> None:
    known = {n.name for n in model.graph.node}
    unknown = sorted(set(names) - known)
    if unknown:
        raise PassError(pass_name, f"{option}: nodes {unknown} are not in the model")


def select(
    model: onnx.ModelProto, op_types: list[str], exclude: list[str], only: list[str] | None
) -> list[onnx.NodeProto]:
    """The nodes the options ask to quantize, before onnxruntime decides what it can."""
    return [
        n
        for n in model.graph.node
        if n.op_type in op_types and n.name not in exclude and (only is None or n.name in only)
    ]


def no_match_message(model: onnx.ModelProto, op_types: list[str]) -> str:
    present = sorted({n.op_type for n in model.graph.node})
    return (
        f"no node to quantize: op_types {op_types} match nothing once the node-name options "
        f"are applied; the model has {present}"
    )


def require_initializer_weights(pass_name: str, model: onnx.ModelProto) -> None:
    """onnxruntime's quantizers only see weights held in initializers; weights in Constant
    nodes (some exporters write them so) would leave every node float for a reason its
    messages never name."""
    held = modelio.constant_weights(model)
    if held:
        raise PassError(
            pass_name,
            f"weights are Constant nodes ({len(held)}, e.g. {held[:3]}), which onnxruntime's "
            "quantizer cannot see: add lift_constants before this pass",
        )


def working_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy the quantizer may trip over less: every node named, output shapes undeclared.

    Names let options address nodes (onnxruntime selects by name); a wrongly declared output
    shape (ddddocr's [1, seqlen]) makes the quantizer's shape inference and calibration sessions
    warn or merge shapes leniently, so the copy declares none and `finish` restores the original.
    """
    out = modelio.copy(model)
    used = {n.name for n in out.graph.node}
    for i, node in enumerate(out.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    for value in out.graph.output:
        value.type.tensor_type.ClearField("shape")
    return out


@contextlib.contextmanager
def dropping_logs(fragment: str) -> Iterator[None]:
    """Hide root-logger records containing `fragment`: advice onnxruntime repeats on every
    call that this project has weighed and decided against (each caller says which)."""

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the calibrator's prints and the pre-processing advice we decided against."""
    with dropping_logs("pre-process"), contextlib.redirect_stdout(io.StringIO()):
        yield


def run_quantizer(
    pass_name: str, model: onnx.ModelProto, quantize: Callable[[str, str], None], fix: str
) -> onnx.ModelProto:
    """Call `quantize(input_path, output_path)` in a private temp dir; return the loaded output.

    Any exception of onnxruntime's quantizer becomes a PassError ending in `fix`."""
    with tempfile.TemporaryDirectory(prefix="ocr-quant-") as tmp:
        src, dst = Path(tmp) / "input.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, str(src))
        try:
            with _quiet():
                quantize(str(src), str(dst))
        except Exception as e:  # the quantizer raises ValueError, RuntimeError, KeyError, ...
            raise PassError(
                pass_name, f"onnxruntime.quantization failed: {type(e).__name__}: {e}; {fix}"
            ) from e
        # load_external_data pulls any side files into the proto before the dir goes away
        return onnx.load(str(dst), load_external_data=True)


def finish(result: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Give the quantized model the original's metadata and output declarations.

    onnxruntime adds its own `onnx.infer` marker; the `ocr.*` contract is what travels."""
    modelio.copy_metadata(result, original)
    declared = {v.name: v for v in original.graph.output}
    for value in result.graph.output:
        if value.name in declared:
            value.CopyFrom(declared[value.name])
    return result


def check_and_finish(
    pass_name: str,
    quantized: onnx.ModelProto,
    original: onnx.ModelProto,
    context: PassContext,
    sample: np.ndarray | None,
    fix: tuple[str, str],
) -> onnx.ModelProto:
    """`finish` the quantizer's output after checking it; raise PassError if it is broken.

    onnx.checker checks the nodes and initializers, onnxruntime loads the finished model and
    runs `sample`. The error reads
    "<cause> produced a model onnxruntime cannot load or run: <error>; <fix>"."""
    cause, advice = fix
    try:
        onnx.checker.check_model(modelio.checkable(quantized))
        out = finish(quantized, original)
        session = make_session(out.SerializeToString(), context.runtime)
        if sample is not None:
            run(session, sample)
    except Exception as e:  # checker, ORT load and ORT run each raise their own types
        raise PassError(
            pass_name,
            f"{cause} produced a model onnxruntime cannot load or run: "
            f"{type(e).__name__}: {e}; {advice}",
        ) from e
    return out


def rel_mse(
    model: onnx.ModelProto, xs: list[np.ndarray], reference: list[np.ndarray], rt: Runtime
) -> float:
    """Output error relative to the reference's energy, to 3 significant digits: a ranking or a
    choice made on it then does not move with the build CPU's float rounding (1e-6 relative)."""
    session = make_session(model.SerializeToString(), rt)
    err = ref = 0.0
    for x, want in zip(xs, reference, strict=True):
        got = run(session, x).astype(np.float64)
        err += float(np.sum((got - want) ** 2))
        ref += float(np.sum(np.asarray(want, np.float64) ** 2))
    return float(f"{err / max(ref, 1e-30):.3g}")
