"""The model stage: bring the recognizer to optimize into the pipeline, with its contract.

Default: ddddocr's `common.onnx` and `CHARSET_BETA` from the installed (pinned) package; any
other CTC recognizer is an ONNX file plus its dictionary under models/input/, described by
params.yaml `model:`. The model is run once here, so a wrong contract (height, channels,
layout, logits vs probabilities, charset length) fails now, with the field to change.

models/source/
  model.onnx      the source model with the `ocr.*` metadata (charset, layout, blank, kind),
                  written from the contract: each stage model keeps its own (prune_charset)
  charset.json    class index -> string (the contract's `charset`)
  contract.json   the resolved contract (contract.Contract): input, output, charset, scoring;
                  the build carries it into recipe.json (Contract.for_model), the bundle into
                  manifest.json
  source.json     where the model came from and its SHA-256
"""

from __future__ import annotations

import json
import os
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ocr_bundles_runtime.manifest_record import OutputSpec
from ocr_bundles_runtime.preprocess import Preprocess, preprocess
from ocr_bundles_runtime.session import quiet_cpu_session, run

from . import modelio
from .atomic import atomic_dir, write_json
from .contract import (
    CHARSET_FILE,
    CONTRACT_FILE,
    Contract,
    ModelParams,
    parse_lines,
    read_charset_file,
    resolve_blank,
)
from .errors import ModelError

INPUT_DIR = Path("models/input")  # user models live here: the model stage depends on it


def ddddocr_files(which: str) -> tuple[Path, list[str]]:
    import ddddocr.charsets as cs

    name, charset = (
        ("common.onnx", cs.CHARSET_BETA) if which == "beta" else ("common_old.onnx", cs.CHARSET_OLD)
    )
    return Path(str(resources.files("ddddocr") / name)), list(charset)


def under_input_dir(path: str, field: str, params_file: str = "params.yaml") -> Path:
    """A user file must sit under models/input/, the folder DVC watches for the model stage.

    Checked on the path as written (made absolute, `..` folded), not on where a link points:
    `dvc add models/input/<file>` with a symlink cache leaves a link into .dvc/cache there."""
    p = Path(path)
    here = Path.cwd()
    written = Path(os.path.normpath(here / p))
    if not written.is_relative_to(Path(os.path.normpath(here / INPUT_DIR))):
        raise ModelError(
            f"{params_file}: {field}: {path} is outside {INPUT_DIR}/; move (or copy) it there so "
            "DVC reruns the model stage when the file changes"
        )
    if not p.is_file():
        raise ModelError(
            f"{params_file}: {field}: {path} does not exist (or is not a file); put the file "
            f"under {INPUT_DIR}/ or correct the path"
        )
    return p


def load_source(
    params: ModelParams, params_file: str = "params.yaml"
) -> tuple[onnx.ModelProto, Contract, list[str], dict[str, Any]]:
    """The source model with `ocr.*` metadata, its resolved contract, charset and origin;
    errors name `params_file` and the field to change."""
    if params.source == "ddddocr":
        path, charset = ddddocr_files(params.ddddocr_model)
        origin = {"package": "ddddocr", "version": metadata.version("ddddocr"), "file": path.name}
    else:
        path = under_input_dir(params.path or "", "model.path", params_file)
        charset = []
        origin = {"file": str(path)}
    model = modelio.load(path)
    charset = _charset(params, model, charset, params_file)
    origin["sha256"] = modelio.sha256(path)
    kind, layout = params.output.kind, params.output.layout
    # the blank is resolved once the output's class count is known to match the charset, so a
    # dictionary that leaves the blank out is reported as such, not as a blank out of range
    unresolved = modelio.with_spec(model, charset, layout, 0, kind)
    contract = probe(unresolved, params, params.output.blank, len(charset), str(path), params_file)
    out = contract.output  # the `ocr.*` metadata is derived from the contract
    model = modelio.with_spec(model, charset, out.layout, out.blank, out.kind)
    return model, contract, charset, origin


def _charset(
    params: ModelParams, model: onnx.ModelProto, package: list[str], params_file: str
) -> list[str]:
    src = params.charset
    if src.source == "ddddocr":
        if params.source != "ddddocr":
            raise ModelError(
                f"{params_file}: model.charset.source is ddddocr but model.source is file; set "
                "model.charset: {source: file, path: models/input/<dictionary>}"
            )
        listed = package
    elif src.source == "file":
        path = under_input_dir(src.path or "", "model.charset.path", params_file)
        listed = read_charset_file(path, params_file)
    else:
        listed = _metadata_charset(model, src.metadata_key or "", params_file)
    return [*src.prepend, *listed, *src.append]


def _metadata_charset(model: onnx.ModelProto, key: str, params_file: str) -> list[str]:
    """A JSON list of strings, or (PaddleOCR-style exports) the dictionary's lines."""
    meta = {p.key: p.value for p in model.metadata_props}
    if key not in meta:
        raise ModelError(
            f"{params_file}: model.charset.metadata_key: the model has no metadata key {key!r}; "
            f"it has {sorted(meta) or 'none'}"
        )
    value = meta[key]
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not (isinstance(data, list) and all(isinstance(c, str) for c in data)):
        data = parse_lines(value)  # "0\n1\n2" or a one-class "5" are lines, not JSON
    if not data:
        raise ModelError(
            f"{params_file}: model.charset.metadata_key: metadata {key!r} is empty; it must hold "
            "the classes (a JSON list of strings, or one class per line)"
        )
    return data


def probe(
    model: onnx.ModelProto,
    params: ModelParams,
    blank: int | str,
    classes: int,
    where: str,
    params_file: str = "params.yaml",
) -> Contract:
    """Run one blank image as the contract feeds it: the output must be CTC-shaped and of the
    declared kind, and the blank one of its classes; then try a batch of two to learn whether
    the model batches. `model` carries the charset, layout and kind as `ocr.*` metadata."""
    spec = params.input
    white = np.full((spec.height, spec.height * 3), 255, np.uint8)
    x = preprocess(white, spec)
    ctc = modelio.spec(model)
    try:
        # inside the try: a graph onnxruntime cannot even load (an op it lacks, an input
        # declared [1, 3, 48, W] it checks at load time) is the same contract problem
        session = quiet_cpu_session(model.SerializeToString())
        out = run(session, x)
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ModelError(
            f"{where}: onnxruntime cannot run it on the contract's input {list(x.shape)} "
            f"[batch, channels, height, width] ({type(e).__name__}: {first}); check "
            f"model.input.height, channels, max_width and pad_to_width in {params_file}"
        ) from e
    modelio.check_ctc_output(out, ctc, where)
    return Contract(
        input=spec,
        input_name=ctc.input_name,
        batch=batches(session, probe_inputs(spec), ctc.layout),
        output=OutputSpec(
            name=ctc.output_name,
            classes=classes,
            layout=params.output.layout,
            blank=resolve_blank(blank, classes, params_file),
            kind=params.output.kind,
        ),
        scoring=params.scoring,
    )


def probe_inputs(spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Two different images of the same width as the contract feeds them: a plain white one
    and one with dark stripes."""
    white = np.full((spec.height, spec.height * 3), 255, np.uint8)
    striped = white.copy()
    striped[:, ::7] = 0
    return preprocess(white, spec), preprocess(striped, spec)


def batches(session: Any, inputs: tuple[np.ndarray, np.ndarray], layout: str) -> bool:
    """Whether a batch of two different inputs runs and gives each item exactly the output it
    gets alone. A graph that mixes the items (a Reshape across the batch axis, or dynamic
    quantization, whose activation scale spans the whole batch) fails this."""
    a, b = inputs
    try:
        out = run(session, np.concatenate([a, b]))
        singles = [run(session, a), run(session, b)]
    except Exception:  # a fixed batch dim or a Reshape to batch 1: runs one by one
        return False
    axis = 1 if layout == "TBC" else 0
    if out.ndim != 3 or out.shape[axis] != 2:
        return False
    return all(
        np.allclose(np.take(out, [i], axis=axis), single, rtol=1e-5, atol=1e-6)
        for i, single in enumerate(singles)
    )


def write_source(
    out: Path, model: onnx.ModelProto, contract: Contract, charset: list[str], origin: dict
) -> None:
    with atomic_dir(out) as tmp:
        modelio.save(model, tmp / "model.onnx")
        write_json(tmp / CHARSET_FILE, charset)
        write_json(tmp / CONTRACT_FILE, contract.dump())
        write_json(tmp / "source.json", origin)
