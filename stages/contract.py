"""The recognizer's contract, declared once in params.yaml `model:` and resolved by the model
stage into models/source/contract.json (`Contract`, read through `read_contract`). The build
writes it for the model it made into recipe.json (`Contract.for_model`), which evaluate and the
bundle read; the manifest carries its output, preprocessing and scoring to every runtime.
ddddocr's contract is just the default values.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ocr_bundles_runtime.manifest_record import OutputSpec
from ocr_bundles_runtime.preprocess import Preprocess

from .errors import ModelError
from .scoring import Scoring


class Strict(BaseModel):
    """Params, recipes and contracts refuse unknown fields (a typo fails, naming the field)."""

    model_config = ConfigDict(extra="forbid")


class CharsetSource(Strict):
    """Where the class list comes from; index = class."""

    source: Literal["ddddocr", "file", "metadata"] = Field(
        "ddddocr",
        description="ddddocr: the installed package's list for the chosen model; file: a JSON "
        "list or a text file with one class per line; metadata: a key of the ONNX model",
    )
    path: str | None = Field(
        None,
        description="file: .json (list of strings) or any other extension read as text, one "
        "class per line; lines are not stripped (some dictionaries hold U+3000 or a space)",
    )
    metadata_key: str | None = Field(
        None, description="metadata: the model's metadata_props key holding the list"
    )
    prepend: list[str] = Field(
        default_factory=list,
        description="classes before the listed ones, e.g. [''] for a blank-first model whose "
        "dictionary leaves the blank out",
    )
    append: list[str] = Field(
        default_factory=list,
        description="classes after the listed ones, e.g. [' '] for a dictionary used with a "
        "space class (PaddleOCR's use_space_char)",
    )

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path' (the dictionary file)")
        if self.source == "metadata" and not self.metadata_key:
            raise ValueError("source 'metadata' needs 'metadata_key'")
        return self


class OutputContract(Strict):
    layout: Literal["TBC", "BTC"] = Field(
        "TBC", description="output axes: time, batch, classes (TBC) or batch first (BTC)"
    )
    blank: int | Literal["first", "last"] = Field(
        0, description="CTC blank class: an index, 'first' (0) or 'last' (classes - 1)"
    )
    kind: Literal["logits", "probabilities"] = Field(
        "logits",
        description="logits: raw scores (softmax applied for confidences); probabilities: the "
        "graph already ends in a Softmax",
    )


class ModelParams(Strict):
    """params.yaml `model:` - which recognizer, and its contract."""

    source: Literal["ddddocr", "file"] = Field(
        "ddddocr", description="the installed (pinned) ddddocr package, or an ONNX file"
    )
    ddddocr_model: Literal["beta", "old"] = Field(
        "beta", description="beta = common.onnx (fp32), old = common_old.onnx (already int8)"
    )
    path: str | None = Field(
        None, description="source 'file': the ONNX model, under models/input/ (a DVC dependency)"
    )
    charset: CharsetSource = Field(default_factory=CharsetSource)
    input: Preprocess = Field(
        default_factory=Preprocess,
        description="the input contract: height, channels, channel_order, normalize, "
        "interpolation, grayscale, backend, max_width, pad_to_width, pad_value",
    )
    output: OutputContract = Field(default_factory=OutputContract)
    scoring: Scoring = Field(
        default_factory=Scoring,
        description="text normalization before comparing predictions with labels",
    )

    @model_validator(mode="after")
    def _file_source(self) -> Self:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path' (the ONNX model under models/input/)")
        return self


CHARSET_FILE = "charset.json"


class Contract(BaseModel):
    """models/source/contract.json: the resolved contract, one typed record every later stage
    reads through `read_contract`. `input` and `output` are the very types the bundle's
    manifest carries (runtime/ocr_bundles_runtime/manifest_record.py), so the contract reaches
    the runtime's preprocessing and decoding without being re-derived on the way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Preprocess = Field(description="the preprocessing that makes the model's input")
    input_name: str = Field(description="the model's image input")
    batch: bool = Field(description="the model accepts a batch dimension > 1")
    output: OutputSpec = Field(description="the CTC output: name, classes, layout, blank, kind")
    charset: Literal["charset.json"] = Field(
        CHARSET_FILE, description="the file beside this one: a JSON list, index = class"
    )
    scoring: Scoring

    def dump(self) -> dict:
        return self.model_dump(mode="json")

    def for_model(self, output_name: str, classes: int, blank: int) -> Contract:
        """This contract as a model built from the source has it: input, layout, kind and
        scoring unchanged; the output's name, classes and blank the model's (prune_charset
        drops classes). The build writes it into recipe.json for evaluate and bundle."""
        output = replace(self.output, name=output_name, classes=classes, blank=blank)
        return self.model_copy(update={"output": output})


CONTRACT_FILE = "contract.json"


def read_contract(model_dir: Path) -> Contract:
    path = Path(model_dir) / CONTRACT_FILE
    try:
        return Contract.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; run the model stage first (dvc repro model)") from None
    except ValueError as e:
        raise ModelError(f"{path}: invalid ({e}); rerun the model stage") from e


def read_model_charset(model_dir: Path) -> list[str]:
    """models/source/charset.json: the source model's class strings, index = class."""
    path = Path(model_dir) / CHARSET_FILE
    try:
        charset = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; run the model stage first (dvc repro model)") from None
    except ValueError as e:
        raise ModelError(f"{path}: invalid JSON ({e}); rerun the model stage") from e
    if not isinstance(charset, list) or not all(isinstance(c, str) for c in charset):
        raise ModelError(f"{path}: not a list of class strings; rerun the model stage")
    return charset


def resolve_blank(blank: int | str, classes: int, params_file: str = "params.yaml") -> int:
    """The blank's class index: `blank` as given, 0 for 'first', classes - 1 for 'last'."""
    index = {"first": 0, "last": classes - 1}.get(blank, blank) if isinstance(blank, str) else blank
    if not 0 <= int(index) < classes:
        raise ModelError(
            f"{params_file}: model.output.blank: {blank} is outside the model's {classes} classes "
            f"(0..{classes - 1}); set it to an index in range, 'first' or 'last'"
        )
    return int(index)


def read_charset_file(path: str | Path, params_file: str = "params.yaml") -> list[str]:
    """A JSON list of strings, or text with one class per line (only line ends removed)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not a class
    except FileNotFoundError:
        raise ModelError(
            f"{path}: charset file not found ({params_file}: model.charset.path)"
        ) from None
    except UnicodeDecodeError as e:
        raise ModelError(
            f"{path}: not UTF-8 text ({e}); save the dictionary as UTF-8 "
            f"({params_file}: model.charset.path)"
        ) from None
    except OSError as e:
        raise ModelError(
            f"{path}: cannot read the charset file ({e.strerror}) "
            f"({params_file}: model.charset.path)"
        ) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: not valid JSON ({e}); expected a list of strings") from None
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ModelError(f"{path}: expected a JSON list of strings (index = class)")
        classes = data
    else:
        classes = parse_lines(raw)
    if not classes:
        raise ModelError(
            f"{path}: the charset file lists no class ({params_file}: model.charset.path)"
        )
    return classes


def parse_lines(raw: str) -> list[str]:
    """One class per line, verbatim but for the line end (\n or \r\n); the text's final line
    end closes the last line, it does not open an empty class."""
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
