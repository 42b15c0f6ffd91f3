"""Loading, saving and describing ONNX CTC recognizers.

The output half of the contract (contract.Contract: charset, layout, blank, kind) also travels
inside each model as metadata (`ocr.*` keys), written from the contract by the model stage, so a
pass that changes the classes (prune_charset) changes the charset in the same object it returns
and every stage model can be decoded on its own. Stages downstream of the build read the final
model's contract from recipe.json (build.read_build_contract), not from these keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .atomic import write_bytes
from .errors import ModelError

_KEYS = ("charset", "layout", "blank")  # ocr.kind is optional: models written before it are logits


@dataclass(frozen=True)
class CtcSpec:
    """What a caller needs to feed the model and read its output."""

    input_name: str
    output_name: str
    charset: list[str]  # index = class; charset[blank] is ""
    layout: str = "TBC"  # output axes: time, batch, classes (or BTC)
    blank: int = 0
    kind: str = "logits"  # or "probabilities": the graph ends in a Softmax


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: passes are pure functions and never edit the model they are given."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def load(path: str | Path) -> onnx.ModelProto:
    """Load a model, refusing garbage, truncated files and external data outside its folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (
        DecodeError,
        ValueError,
        RuntimeError,
        onnx.onnx_cpp2py_export.checker.ValidationError,
    ) as e:
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (empty or truncated graph)")
    _check_external_data(model, path.parent.resolve(), path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (ValueError, OSError, onnx.checker.ValidationError) as e:
            raise ModelError(
                f"{path}: its external weight data cannot be read "
                f"({type(e).__name__}: {e}); keep the data file next to the model"
            ) from e
    return model


def _check_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            target = (base / entry.value).resolve()
            if not target.is_relative_to(base):
                raise ModelError(
                    f"{path}: initializer '{tensor.name}' points outside the model folder "
                    f"({entry.value}); move the data file next to the model"
                )


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, then rename."""
    write_bytes(Path(path), model.SerializeToString())


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def spec(model: onnx.ModelProto) -> CtcSpec:
    """Read the CTC contract written by `with_spec`."""
    meta = {p.key: p.value for p in model.metadata_props}
    return spec_from_metadata(meta, input_value(model).name, model.graph.output[0].name)


def spec_from_metadata(meta: dict[str, str], input_name: str, output_name: str) -> CtcSpec:
    """The same contract from a metadata map, e.g. an onnxruntime session's, so a caller that
    already holds a session need not parse the model file a second time."""
    missing = [k for k in _KEYS if f"ocr.{k}" not in meta]
    if missing:
        raise ModelError(f"model has no ocr.* metadata ({', '.join(missing)}); run the model stage")
    return CtcSpec(
        input_name=input_name,
        output_name=output_name,
        charset=json.loads(meta["ocr.charset"]),
        layout=meta["ocr.layout"],
        blank=int(meta["ocr.blank"]),
        kind=meta.get("ocr.kind", "logits"),
    )


def with_spec(
    model: onnx.ModelProto, charset: list[str], layout: str, blank: int, kind: str = "logits"
) -> onnx.ModelProto:
    """A copy of `model` carrying the CTC contract as metadata."""
    out = copy(model)
    values = {
        "charset": json.dumps(charset, ensure_ascii=False),
        "layout": layout,
        "blank": str(blank),
        "kind": kind,
    }
    replaced = {f"ocr.{k}" for k in values}
    kept = [p for p in out.metadata_props if p.key not in replaced]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    for key, value in values.items():
        out.metadata_props.add(key=f"ocr.{key}", value=value)
    return out


def copy_metadata(out: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """Give `out` exactly `source`'s metadata_props (the CTC contract travels; tools' own
    bookkeeping, e.g. onnxsim's or onnxruntime's, does not). Returns `out`."""
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    return out


def size_mb(model_or_path: onnx.ModelProto | str | Path) -> float:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path.ByteSize() / 1e6
    return Path(model_or_path).stat().st_size / 1e6


def check_ctc_output(output: np.ndarray, spec_: CtcSpec, where: str) -> None:
    """The output must be [T, 1, C] (TBC) or [1, T, C] (BTC) with C == len(charset), and
    rows summing to 1 exactly when the contract says probabilities."""
    if output.ndim != 3:
        raise ModelError(
            f"{where}: output '{spec_.output_name}' has shape {list(output.shape)}; "
            "a CTC recognizer must output 3-D scores [T,1,C] or [1,T,C]"
        )
    batch_axis = 1 if spec_.layout == "TBC" else 0
    if output.shape[batch_axis] != 1:
        other = "BTC" if spec_.layout == "TBC" else "TBC"
        raise ModelError(
            f"{where}: output shape {list(output.shape)} has no batch axis of size 1 at "
            f"position {batch_axis} for layout {spec_.layout}; set model.output.layout: {other} "
            "in params.yaml"
        )
    if output.shape[2] != len(spec_.charset):
        raise ModelError(
            f"{where}: the model outputs {output.shape[2]} classes but the charset has "
            f"{len(spec_.charset)} entries; use the charset file that matches this model, or "
            "model.charset.prepend/append for a blank or space class the file leaves out"
        )
    sums = output.sum(axis=-1)
    is_prob = bool(np.all(output >= 0) and np.allclose(sums, 1.0, atol=1e-3))
    if spec_.kind == "logits" and is_prob:
        raise ModelError(
            f"{where}: every output row is non-negative and sums to 1: the model outputs "
            "probabilities (a final Softmax); set model.output.kind: probabilities"
        )
    if spec_.kind == "probabilities" and not is_prob:
        raise ModelError(
            f"{where}: model.output.kind is probabilities but the output rows do not sum to 1 "
            f"(first row sums to {float(sums.flat[0]):.3g}); set model.output.kind: logits"
        )


# ops only a quantizer (or a QAT export) emits: the one list every stage uses
QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "QAttention",
        "QGemm",
    }
)
QUANT_PREFIXES = ("QLinear", "DynamicQuantize")
HALF_TYPES = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def is_quant_op(op_type: str) -> bool:
    return op_type in QUANT_OPS or op_type.startswith(QUANT_PREFIXES)


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """Op types in `model` that show it has been quantized already."""
    return sorted({n.op_type for n in model.graph.node if is_quant_op(n.op_type)})


def is_float(model: onnx.ModelProto) -> bool:
    """No quantization op and no half-precision initializer: the most accurate kind of model."""
    if quantized_ops(model):
        return False
    return not any(t.data_type in HALF_TYPES for t in model.graph.initializer)


def constant_weights(model: onnx.ModelProto) -> list[str]:
    """Names of Constant nodes holding float tensors of more than one element: weights that
    tools expecting initializers (onnxruntime's quantizers) cannot see."""
    floats = (onnx.TensorProto.FLOAT, *HALF_TYPES)
    return [
        node.output[0]
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value" and attr.t.data_type in floats and int(np.prod(attr.t.dims)) > 1
    ]


def input_value(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The data input: old-IR models also list their initializers as graph inputs."""
    inits = {t.name for t in model.graph.initializer}
    return next(v for v in model.graph.input if v.name not in inits)


def exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose graph outputs are `names`, in that order (types left to onnxruntime's
    inference): how a probe reads intermediate tensors from one run."""
    out = copy(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return out


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose shapeless outputs declare an empty shape, for onnx.checker only.

    onnx 1.23's checker rejects a graph output without a shape field, yet "no shape" is how
    fix_output_shape (rank 0) and the quantizers' working copies say "unknown" on purpose."""
    out = copy(model)
    for value in out.graph.output:
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.SetInParent()
    return out
