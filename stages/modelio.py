"""Loading, saving and describing ONNX CTC recognizers.

The recognizer's contract travels inside the model as metadata (`ocr.*` keys), so a pass that
changes the classes (prune_charset) changes the charset in the same object it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError

_KEYS = ("charset", "layout", "blank")


@dataclass(frozen=True)
class CtcSpec:
    """What a caller needs to feed the model and read its output."""

    input_name: str
    output_name: str
    charset: list[str]  # index = class; charset[blank] is ""
    layout: str = "TBC"  # output axes: time, batch, classes (or BTC)
    blank: int = 0


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


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace folder `out_dir` by `tmp`; the old one is moved aside first, so a failed rename
    loses nothing."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    had_old = out_dir.exists()
    if had_old:
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if had_old:
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: object) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_bytes(Path(path), text.encode())


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def spec(model: onnx.ModelProto) -> CtcSpec:
    """Read the CTC contract written by `with_spec`."""
    meta = {p.key: p.value for p in model.metadata_props}
    return spec_from_metadata(meta, model.graph.input[0].name, model.graph.output[0].name)


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
    )


def with_spec(
    model: onnx.ModelProto, charset: list[str], layout: str, blank: int
) -> onnx.ModelProto:
    """A copy of `model` carrying the CTC contract as metadata."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {
        "charset": json.dumps(charset, ensure_ascii=False),
        "layout": layout,
        "blank": str(blank),
    }
    kept = [p for p in out.metadata_props if not p.key.startswith("ocr.")]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    for key, value in values.items():
        out.metadata_props.add(key=f"ocr.{key}", value=value)
    return out


def size_mb(model_or_path: onnx.ModelProto | str | Path) -> float:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path.ByteSize() / 1e6
    return Path(model_or_path).stat().st_size / 1e6


def check_ctc_output(logits: np.ndarray, spec_: CtcSpec, where: str) -> None:
    """The output must be [T, 1, C] (TBC) or [1, T, C] (BTC) with C == len(charset)."""
    if logits.ndim != 3:
        raise ModelError(
            f"{where}: output '{spec_.output_name}' has shape {list(logits.shape)}; "
            "a CTC recognizer must output 3-D logits [T,1,C] or [1,T,C]"
        )
    batch_axis = 1 if spec_.layout == "TBC" else 0
    if logits.shape[batch_axis] != 1:
        raise ModelError(
            f"{where}: output shape {list(logits.shape)} has no batch axis of size 1 "
            f"at position {batch_axis} for layout {spec_.layout}; set model.layout in params.yaml"
        )
    if logits.shape[2] != len(spec_.charset):
        raise ModelError(
            f"{where}: the model outputs {logits.shape[2]} classes but the charset has "
            f"{len(spec_.charset)} entries; use the charset file that matches this model"
        )
