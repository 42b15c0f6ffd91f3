"""The model stage: bring the recognizer to optimize into the pipeline, with its CTC contract.

Default: ddddocr's `common.onnx` and `CHARSET_BETA` from the installed (pinned) package; any
other CTC recognizer is an ONNX file plus a JSON charset named in params.yaml.
"""

from __future__ import annotations

import json
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import modelio
from .errors import ModelError
from .inference import Runtime, make_session, run
from .recipe import ModelSource

PROBE_WIDTH = 128  # any width the model accepts; used once to check the output is CTC-shaped


def ddddocr_files(which: str) -> tuple[Path, list[str]]:
    import ddddocr.charsets as cs

    name, charset = (
        ("common.onnx", cs.CHARSET_BETA) if which == "beta" else ("common_old.onnx", cs.CHARSET_OLD)
    )
    return Path(str(resources.files("ddddocr") / name)), list(charset)


def read_charset(path: str | Path) -> list[str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path}: charset file not found (params.yaml: model.charset_file)"
        ) from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e}); expected a list of strings") from None
    if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
        raise ModelError(f"{path}: expected a JSON list of strings (index = class)")
    return data


def load_source(src: ModelSource) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The source model with `ocr.*` metadata, and a description of where it came from."""
    if src.source == "ddddocr":
        path, charset = ddddocr_files(src.ddddocr_model)
        origin = {"package": "ddddocr", "version": metadata.version("ddddocr"), "file": path.name}
    else:
        path, charset = Path(src.path or ""), read_charset(src.charset_file or "")
        origin = {"file": str(path), "charset_file": src.charset_file}
    if not 0 <= src.blank < len(charset):
        raise ModelError(f"model.blank={src.blank} is outside the charset (len {len(charset)})")
    model = modelio.with_spec(modelio.load(path), charset, src.layout, src.blank)
    probe(model, src, str(path))
    origin["sha256"] = modelio.sha256(path)
    return model, origin


def probe(model: onnx.ModelProto, src: ModelSource, where: str) -> None:
    """Run one blank image: the output must be CTC logits matching the charset."""
    spec = modelio.spec(model)
    x = np.ones((1, src.channels, src.height, PROBE_WIDTH), np.float32)
    try:
        logits = run(make_session(model.SerializeToString(), Runtime()), x)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(
            f"{where}: onnxruntime cannot run it on a [1,{src.channels},{src.height},"
            f"{PROBE_WIDTH}] input ({type(e).__name__}: {e}); check model.height/channels"
        ) from e
    modelio.check_ctc_output(logits, spec, where)


def write_source(out: Path, model: onnx.ModelProto, origin: dict[str, Any]) -> None:
    modelio.save(model, out / "model.onnx")
    modelio.write_json(out / "charset.json", modelio.spec(model).charset)
    modelio.write_json(out / "source.json", origin)
