"""Any CTC recognizer by configuration alone: one hand-made reader per contract variant goes
through the model stage, a build whose passes depend on the contract, evaluation and the bundle,
and the runtime must read back the exact string drawn in the image, confidently.

Then every way a contract can be declared wrong must stop the model stage with a message naming
the params.yaml field to change, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import builders
import numpy as np
import onnx
import pytest
import readable
import yaml
from readable import Reader

from ocr_bundles_runtime import Recognizer
from ocr_bundles_runtime.preprocess import Preprocess, preprocess, preprocess_all
from ocr_bundles_runtime.session import Runtime
from stages import modelio, registry
from stages.build import run_passes, write_build
from stages.cli import main
from stages.contract import ModelParams, read_charset_file, read_contract
from stages.data.dataset import Sample, image_name, read_sets, write_split
from stages.errors import ModelError, PassError
from stages.evaluate import predict
from stages.records import BUILD_FILE, BuildRecord, EvalRecord, read_record
from stages.scoring import Scoring
from stages.source import load_source, write_source

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "readable"  # the data source (and evaluation set) name
TARGET = "reader"
MODEL = "models/input/reader.onnx"
SIZES = {"calib": 4, "val": 6, "eval": 8}
LETTERS = ("", "a", "b", "c", "d", "e", "f")  # blank first


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class Case:
    """One contract variant: the reader, how params.yaml declares it, and a recipe whose passes
    depend on that contract."""

    reader: Reader
    charset: dict[str, Any]  # params.yaml model.charset
    passes: list[dict[str, Any]]
    keep: str  # the characters prune_charset keeps (the labels use only these)
    dictionary: tuple[str, tuple[str, ...]] | None = None  # file under models/input, entries
    blank: int | str = 0
    scoring: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    # what the image draws for a text: the space reader emits its space class at line ends
    drawn: Callable[[str], str] = _same
    # the label a person wrote for a text: lower case where the site ignores case
    label: Callable[[str], str] = _same
    text: str = "abcab"  # read back through the bundle, besides the eval texts

    def params(self) -> ModelParams:
        r = self.reader
        return ModelParams.model_validate(
            {
                "source": "file",
                "path": MODEL,
                "charset": self.charset,
                "input": {
                    "height": r.height,
                    "channels": r.channels,
                    "channel_order": r.channel_order,
                    "normalize": r.normalize,
                    "interpolation": "bilinear",
                },
                "output": {"layout": r.layout, "blank": self.blank, "kind": r.kind},
                "scoring": self.scoring,
            }
        )

    def texts(self, split: str) -> list[str]:
        """What the images of `split` draw, in the model's own classes."""
        alphabet = self.keep.replace(" ", "").replace("\u3000", "")
        out = readable.texts(alphabet, SIZES[split], seed=list(SIZES).index(split))
        if "\u3000" in self.keep:  # inside a line, where scoring's strip keeps it
            out = [t[0] + "\u3000" + t[1:] if i % 2 else t for i, t in enumerate(out)]
        return out


JSON_DICT = {"source": "file", "path": "models/input/dict.json"}
QUANT_MATMUL = {"quantize_dynamic": {"op_types": ["MatMul"]}}

CASES = {
    "btc_logits_json": Case(
        Reader(LETTERS),
        JSON_DICT,
        [{"prune_charset": {"chars": "abcd"}}, QUANT_MATMUL],
        keep="abcd",
        dictionary=("dict.json", LETTERS),
        blank="first",
    ),
    "tbc_probabilities_gemm": Case(
        Reader(LETTERS, layout="TBC", kind="probabilities", head="gemm"),
        JSON_DICT,
        [
            {"fix_output_shape": {}},
            {"prune_charset": {"chars": "abce"}},
            {"quantize_dynamic": {"op_types": ["Gemm"]}},
        ],
        keep="abce",
        dictionary=("dict.json", LETTERS),
        text="ceab",
    ),
    "rgb_signed": Case(
        Reader(LETTERS, channels=3, normalize="signed"),
        JSON_DICT,
        [{"prune_charset": {"chars": "bcdf"}}, {"quantize_dynamic": {"op_types": ["MatMul"]}}],
        keep="bcdf",
        dictionary=("dict.json", LETTERS),
        text="fdcb",
    ),
    "bgr_tbc_ort": Case(
        Reader(LETTERS, channels=3, channel_order="bgr", layout="TBC"),
        JSON_DICT,
        [{"prune_charset": {"chars": "abcf"}}, QUANT_MATMUL],
        keep="abcf",
        dictionary=("dict.json", LETTERS),
        bundle={"formats": ["ort", "onnx"]},
        text="fab",
    ),
    "constants_probabilities": Case(
        Reader(LETTERS, constants=True, kind="probabilities"),
        JSON_DICT,
        [{"lift_constants": {}}, {"prune_charset": {"chars": "abcd"}}, QUANT_MATMUL],
        keep="abcd",
        dictionary=("dict.json", LETTERS),
        bundle={"fallback": "float"},
    ),
    "blank_last": Case(
        Reader(("a", "b", "c", "d", "e", "f", ""), blank=6),
        JSON_DICT,
        [{"prune_charset": {"chars": "abcd"}}, QUANT_MATMUL],
        keep="abcd",
        dictionary=("dict.json", ("a", "b", "c", "d", "e", "f", "")),
        blank="last",
    ),
    # PaddleOCR-style: a text dictionary without the blank, holding U+3000, and a space class
    # the dictionary leaves out; the model emits the space at both line ends, writes capitals
    # the labels do not: only a scoring that strips and casefolds (in evaluation and in
    # quantize_to_tolerance's decisions alike) finds it right
    "text_dictionary_space_casefold": Case(
        Reader(("", "A", "B", "C", "\u3000", "D", " ")),
        {
            "source": "file",
            "path": "models/input/dict.txt",
            "prepend": [""],
            "append": [" "],
        },
        [
            {"prune_charset": {"chars": "ABC\u3000 "}},
            {
                "quantize_to_tolerance": {
                    "static_op_types": [],
                    "dynamic_op_types": ["MatMul"],
                    "max_accuracy_drop_pts": 0.0,
                    "min_agreement": 1.0,
                }
            },
        ],
        keep="ABC\u3000 ",
        dictionary=("dict.txt", ("A", "B", "C", "\u3000", "D")),
        scoring={"strip": True, "casefold": True},
        drawn=lambda text: f" {text} ",
        label=str.lower,
        text="AB\u3000C",
    ),
    # the dictionary as lines in a metadata key; a 1x1 Conv head, opset 11 converted to 13 so
    # quantize_to_tolerance may quantize both Convs per channel
    "metadata_lines_conv_head": Case(
        Reader(
            LETTERS,
            layout="TBC",
            kind="probabilities",
            head="conv",
            opset=11,
            metadata={"character": "a\nb\nc\nd\ne\nf\n"},
        ),
        {"source": "metadata", "metadata_key": "character", "prepend": [""]},
        [
            {"convert_opset": {"opset": 13}},
            {"prune_charset": {"chars": "abdf"}},
            {
                "quantize_to_tolerance": {
                    "static_op_types": ["Conv"],
                    "dynamic_op_types": [],
                    "max_accuracy_drop_pts": 0.0,
                    "min_agreement": 1.0,
                    "calibration_images": 4,
                    "sensitivity_images": 4,
                }
            },
        ],
        keep="abdf",
        text="fadb",
    ),
    "metadata_json_conv_head_btc": Case(
        Reader(LETTERS, head="conv", metadata={"ocr_charset": json.dumps(LETTERS)}),
        {"source": "metadata", "metadata_key": "ocr_charset"},
        [{"prune_charset": {"chars": "bcde"}}, {"quantize_dynamic": {"op_types": ["Conv"]}}],
        keep="bcde",
        text="edcb",
    ),
}


def model_stage(root: Path, case: Case) -> Path:
    """models/input/ holds the reader (and its dictionary); the model stage writes the source."""
    modelio.save(case.reader.model(), root / MODEL)
    if case.dictionary is not None:
        name, entries = case.dictionary
        readable.write_dictionary(root / "models" / "input" / name, entries)
    model, contract, charset, origin = load_source(case.params())
    out = root / "models" / "source"
    write_source(out, model, contract, charset, origin)
    return out


def write_readable_data(root: Path, case: Case) -> None:
    for split in SIZES:
        samples = [
            Sample(image_name(i), case.label(text), case.reader.image(case.drawn(text)))
            for i, text in enumerate(case.texts(split))
        ]
        write_split(root / "data" / SOURCE / split, samples)


def build(root: Path, case: Case) -> Path:
    """build/<TARGET>/model by the real build code, the recipe starting from the contract."""
    contract = read_contract(root / "models" / "source")
    rec = builders.recipe(case.passes, preprocess=contract.input.as_dict(), bundle=case.bundle)
    pre = rec.preprocess
    calib = read_sets(root / "data", [SOURCE], "calib")[SOURCE]
    val = read_sets(root / "data", [SOURCE], "val")[SOURCE]
    context = registry.PassContext(
        calibration=preprocess_all([p for p, _ in calib], pre),
        validation={
            SOURCE: list(
                zip(preprocess_all([p for p, _ in val], pre), [t for _, t in val], strict=True)
            )
        },
        allowed_chars=case.keep,
        runtime=rec.runtime,
        input=pre,
        scoring=contract.scoring,
    )
    model = modelio.load(root / "models" / "source" / "model.onnx")
    out = root / "build" / TARGET / "model"
    write_build(out, rec, run_passes(model, rec, context), TARGET, contract=contract)
    return out


def kept_classes(case: Case) -> list[str]:
    """The bundle's charset: the blank first, then the kept classes in the model's order."""
    classes = case.reader.classes
    blank = case.reader.blank
    return [classes[blank]] + [c for i, c in enumerate(classes) if i != blank and c in case.keep]


@pytest.mark.parametrize("name", list(CASES))
def test_reader_reads_its_string_through_the_whole_chain(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    source = model_stage(tmp_path, case)
    contract = read_contract(source)
    r = case.reader
    out = contract.output
    assert (out.layout, out.kind, out.blank) == (r.layout, r.kind, r.blank)
    assert (out.classes, contract.batch) == (len(r.classes), r.batch)
    assert json.loads((source / "charset.json").read_text(encoding="utf-8")) == list(r.classes)

    write_readable_data(tmp_path, case)
    build(tmp_path, case)
    built = read_record(tmp_path / "build" / TARGET / "model" / BUILD_FILE, BuildRecord)
    for stage in built.stages:
        for report in stage.report.values():  # quantize_to_tolerance judged the reference right
            assert report["reference"] == {SOURCE: 100.0}, stage
    record = read_record(builders.evaluate_class(tmp_path, TARGET, (SOURCE,)), EvalRecord)
    for variant in ("reference", "final"):
        assert record.variants[variant].sets[SOURCE].accuracy == 1.0, variant
    bundle = builders.bundle_class(tmp_path, TARGET)

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["output"]["layout"] == r.layout
    assert manifest["output"]["kind"] == r.kind
    assert json.loads((bundle / "charset.json").read_text(encoding="utf-8")) == kept_classes(case)
    recognizer = Recognizer.from_bundle(bundle)
    scoring = Scoring(**case.scoring)
    for text in [case.text, *case.texts("eval")]:
        result = recognizer.predict(r.image(case.drawn(text)))
        # the runtime strips whitespace at the ends as the contract's scoring does
        drawn = case.drawn(text)
        assert result.text == (drawn.strip() if scoring.strip else drawn)
        assert scoring.normalize(result.text) == scoring.normalize(case.label(text))
        # a second softmax over probabilities would give ~1 / classes here, not ~1
        assert result.confidence > 0.99, result
        assert result.status == "ok", result.events


# Some dictionaries list a character twice (PaddleOCR's ppocr_keys do); prune_charset keeps every
# column of an allowed character, so the pruned charset has the duplicate too.
DUPLICATES = Case(
    Reader(("", "a", "b", "a", "c", "d")),
    JSON_DICT,
    [{"prune_charset": {"chars": "ab"}}, QUANT_MATMUL],
    keep="ab",
    dictionary=("dict.json", ("", "a", "b", "a", "c", "d")),
    text="abba",
)


def test_a_dictionary_with_a_duplicate_entry_prunes_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(CASES, "duplicates", DUPLICATES)  # undone after the test
    test_reader_reads_its_string_through_the_whole_chain("duplicates", tmp_path, monkeypatch)


def read(source: Path, image: bytes, pre: Preprocess) -> list[str]:
    return predict(source / "model.onnx", [preprocess(image, pre)], Runtime())


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_channel_order_decides_which_string_is_read(
    order: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A 3-channel reader looks only at the channel that is R in its order: declared right it
    reads the string drawn in R, declared wrong the one drawn in B. The model stage cannot tell
    (both run), so the contract's channel_order is what every stage must follow."""
    monkeypatch.chdir(tmp_path)
    case = Case(
        Reader(LETTERS, channels=3, channel_order=order),  # type: ignore[arg-type]
        JSON_DICT,
        [],
        keep="abcdef",
        dictionary=("dict.json", LETTERS),
    )
    source = model_stage(tmp_path, case)
    image = case.reader.image("abc", other="fed")
    right = read_contract(source).input
    wrong = type(right)(**{**right.as_dict(), "channel_order": "bgr" if order == "rgb" else "rgb"})
    texts = [read(source, image, p) for p in (right, wrong)]
    assert texts == [["abc"], ["fed"]]


def test_normalization_decides_what_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A reader built for [-1, 1] inputs reads its string only when the contract says signed."""
    monkeypatch.chdir(tmp_path)
    reader = Reader(LETTERS, normalize="signed")
    case = Case(reader, JSON_DICT, [], keep="abcdef", dictionary=("dict.json", LETTERS))
    source = model_stage(tmp_path, case)
    right = read_contract(source).input
    wrong = type(right)(**{**right.as_dict(), "normalize": "unit"})
    image = reader.image("cafe")
    texts = [read(source, image, p) for p in (right, wrong)]
    assert texts[0] == ["cafe"]
    assert texts[1] != ["cafe"]


def test_batching_is_probed_item_by_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for head, batch in (("matmul", True), ("conv", True), ("gemm", False)):
        reader = Reader(LETTERS, head=head)  # type: ignore[arg-type]
        case = Case(reader, JSON_DICT, [], "abc", ("dict.json", LETTERS))
        assert read_contract(model_stage(tmp_path, case)).batch is batch, head


@pytest.mark.parametrize(
    "passes", [[{"prune_charset": {"chars": "abc"}}], [QUANT_MATMUL]], ids=["prune", "quantize"]
)
def test_weights_in_constants_name_lift_constants(
    passes: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    case = Case(Reader(LETTERS, constants=True), JSON_DICT, passes, "abc", ("dict.json", LETTERS))
    model_stage(tmp_path, case)
    write_readable_data(tmp_path, case)
    with pytest.raises(PassError, match="add lift_constants before this pass"):
        build(tmp_path, case)


# --- every wrong declaration stops the model stage with the field to change ---------------------


def write_params(root: Path, model: dict[str, Any]) -> Path:
    real = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = {
        "targets": [TARGET],
        "model": model,
        "charset": "chars:abcdef",
        "data": {"synthetic": {"clean": {"seed": 1}}},
        "bench": {"baselines": []},
        "versions": real["versions"],
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    return path


def reader_params(reader: Reader, **changes: Any) -> dict[str, Any]:
    """params.yaml `model:` declaring `reader` correctly, then `changes` (dotted keys)."""
    model: dict[str, Any] = {
        "source": "file",
        "path": MODEL,
        "charset": {"source": "file", "path": "models/input/dict.json"},
        "input": {
            "height": reader.height,
            "channels": reader.channels,
            "channel_order": reader.channel_order,
            "normalize": reader.normalize,
        },
        "output": {"layout": reader.layout, "blank": reader.blank, "kind": reader.kind},
    }
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = model
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    return model


def run_model_stage(root: Path, model: dict[str, Any], capsys: pytest.CaptureFixture) -> str:
    """`python -m stages model` in `root`: it must exit 2 with one error line and write nothing."""
    params = write_params(root, model)
    rc = main(["model", "--params", str(params), "--out", "models/source"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert not (root / "models" / "source").exists()
    return err


def put(root: Path, reader: Reader, entries: tuple[str, ...] | None = None) -> None:
    modelio.save(reader.model(), root / MODEL)
    readable.write_dictionary(root / "models" / "input" / "dict.json", entries or reader.classes)


BTC = Reader(LETTERS)
TBC = Reader(LETTERS, layout="TBC")
PROBS = Reader(LETTERS, kind="probabilities")
RGB = Reader(LETTERS, channels=3)

# name: (the reader on disk, its dictionary, the params.yaml model: block, what the error names)
WRONG: dict[str, tuple[Reader, tuple[str, ...] | None, dict[str, Any], list[str]]] = {
    "channels": (
        RGB,
        None,
        reader_params(RGB, **{"input.channels": 1}),
        ["model.input", "channels"],
    ),
    "height": (BTC, None, reader_params(BTC, **{"input.height": 32}), ["model.input", "height"]),
    "layout_btc_as_tbc": (
        BTC,
        None,
        reader_params(BTC, **{"output.layout": "TBC"}),
        ["model.output.layout: BTC"],
    ),
    "layout_tbc_as_btc": (
        TBC,
        None,
        reader_params(TBC, **{"output.layout": "BTC"}),
        ["model.output.layout: TBC"],
    ),
    "probabilities_declared_logits": (
        PROBS,
        None,
        reader_params(PROBS, **{"output.kind": "logits"}),
        ["model.output.kind: probabilities"],
    ),
    "logits_declared_probabilities": (
        BTC,
        None,
        reader_params(BTC, **{"output.kind": "probabilities"}),
        ["model.output.kind: logits"],
    ),
    "dictionary_without_blank": (
        BTC,
        LETTERS[1:],
        reader_params(BTC),
        ["6 entries", "model.charset.prepend/append"],
    ),
    # the blank's index is right for the model, but the dictionary leaves the blank out: the
    # message must be about the charset, not about the blank being out of range
    "blank_last_dictionary_without_blank": (
        Reader(("a", "b", "c", "d", "e", "f", ""), blank=6),
        ("a", "b", "c", "d", "e", "f"),
        reader_params(Reader(("a", "b", "c", "d", "e", "f", ""), blank=6)),
        ["model.charset.prepend/append"],
    ),
    "blank_out_of_range": (
        BTC,
        None,
        reader_params(BTC, **{"output.blank": 7}),
        ["model.output.blank", "0..6"],
    ),
    "model_outside_input_dir": (
        BTC,
        None,
        reader_params(BTC, path="elsewhere/reader.onnx"),
        ["model.path", "outside models/input"],
    ),
    "model_escaping_input_dir": (
        BTC,
        None,
        reader_params(BTC, path="models/input/../reader.onnx"),
        ["model.path", "outside models/input"],
    ),
    "model_missing": (
        BTC,
        None,
        reader_params(BTC, path="models/input/nothing.onnx"),
        ["model.path", "does not exist"],
    ),
    "charset_file_missing": (
        BTC,
        None,
        reader_params(BTC, **{"charset.path": "models/input/nothing.txt"}),
        ["model.charset.path", "does not exist"],
    ),
    "charset_file_outside_input_dir": (
        BTC,
        None,
        reader_params(BTC, **{"charset.path": "dict.json"}),
        ["model.charset.path", "outside models/input"],
    ),
    "metadata_key_missing": (
        BTC,
        None,
        reader_params(BTC, charset={"source": "metadata", "metadata_key": "character"}),
        ["model.charset.metadata_key", "'character'"],
    ),
    "charset_ddddocr_for_a_file_model": (
        BTC,
        None,
        reader_params(BTC, charset={"source": "ddddocr"}),
        ["model.charset"],
    ),
    "file_source_without_path": (
        BTC,
        None,
        reader_params(BTC, path=None),
        ["params.yaml: model", "needs 'path'"],
    ),
    "charset_metadata_without_key": (
        BTC,
        None,
        reader_params(BTC, charset={"source": "metadata"}),
        ["params.yaml: model.charset", "metadata_key"],
    ),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_a_wrong_contract_names_the_field_to_change(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    reader, entries, model, expected = WRONG[name]
    monkeypatch.chdir(tmp_path)
    put(tmp_path, reader, entries)
    (tmp_path / "elsewhere").mkdir()
    modelio.save(reader.model(), tmp_path / "elsewhere" / "reader.onnx")
    modelio.save(reader.model(), tmp_path / "models" / "reader.onnx")
    readable.write_dictionary(tmp_path / "dict.json", reader.classes)
    err = run_model_stage(tmp_path, model, capsys)
    for fragment in expected:
        assert fragment in err, err


def test_the_right_contract_passes_the_same_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """The control for the failure cases above: the same setup, declared right, succeeds."""
    monkeypatch.chdir(tmp_path)
    put(tmp_path, BTC)
    params = write_params(tmp_path, reader_params(BTC))
    assert main(["model", "--params", str(params), "--out", "models/source"]) == 0
    assert "7 classes" in capsys.readouterr().out
    assert read_contract(tmp_path / "models" / "source").output.classes == 7


def test_a_model_onnxruntime_cannot_load_is_a_contract_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An input declared [N, 3, 16, W] is checked when the session loads, before any run."""
    monkeypatch.chdir(tmp_path)
    model = RGB.model()
    model.graph.node.append(onnx.helper.make_node("Relu", ["output"], ["unused"], domain="no.such"))
    model.opset_import.add(domain="no.such", version=1)
    modelio.save(model, tmp_path / MODEL)
    readable.write_dictionary(tmp_path / "models" / "input" / "dict.json", LETTERS)
    params = ModelParams.model_validate(reader_params(RGB))
    with pytest.raises(ModelError, match="onnxruntime cannot run it") as e:
        load_source(params)
    assert "model.input.height, channels" in str(e.value)


def test_a_linked_file_under_models_input_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`dvc add models/input/<file>` with a symlink cache leaves a link into .dvc/cache: the
    path as written is what must sit under models/input/."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    modelio.save(BTC.model(), cache / "reader.onnx")
    (tmp_path / "models" / "input").mkdir(parents=True)
    (tmp_path / MODEL).symlink_to(cache / "reader.onnx")
    readable.write_dictionary(tmp_path / "models" / "input" / "dict.json", LETTERS)
    _, contract, charset, origin = load_source(ModelParams.model_validate(reader_params(BTC)))
    assert (contract.output.classes, origin["file"]) == (7, MODEL)
    assert charset == list(LETTERS)


# --- dictionaries: read verbatim, one class per line --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "classes"),
    [
        (b"a\nb\n\xe3\x80\x80\n \n", ["a", "b", "\u3000", " "]),  # U+3000 and space kept
        (b"a\r\nb\r\n", ["a", "b"]),  # Windows line ends
        (b"\xef\xbb\xbfa\nb", ["a", "b"]),  # a BOM is not part of the first class
        (b"a\n\nb\n", ["a", "", "b"]),  # an empty line is an (empty) class
    ],
)
def test_text_dictionary_lines_are_classes_verbatim(tmp_path: Path, raw: bytes, classes: list):
    path = tmp_path / "dict.txt"
    path.write_bytes(raw)
    assert read_charset_file(path) == classes


def test_json_dictionary_may_start_with_a_bom(tmp_path: Path):
    path = tmp_path / "dict.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(["", "a"]).encode())
    assert read_charset_file(path) == ["", "a"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "lists no class"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"a": 1}', "JSON list of strings"),
    ],
)
def test_bad_dictionary_names_the_field(tmp_path: Path, raw: bytes, message: str):
    path = tmp_path / ("dict.json" if raw.startswith(b"{") else "dict.txt")
    path.write_bytes(raw)
    with pytest.raises(ModelError, match=message) as e:
        read_charset_file(path)
    assert "model.charset.path" in str(e.value) or "JSON" in str(e.value)


def test_a_directory_as_dictionary_is_a_model_error(tmp_path: Path):
    with pytest.raises(ModelError, match=r"model\.charset\.path"):
        read_charset_file(tmp_path)


@pytest.mark.parametrize(
    ("value", "classes"),
    [
        ("a\nb\n", ["a", "b"]),  # lines ending in a newline: no empty last class
        ('["", "a"]', ["", "a"]),
        ("5", ["5"]),  # one line that happens to be JSON, not a list: a class
        ("0\n1\n2", ["0", "1", "2"]),
    ],
)
def test_metadata_dictionary_as_json_or_lines(
    value: str, classes: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    reader = Reader(tuple(["", *classes]) if classes[0] else tuple(classes))
    model = reader.with_(metadata={"dict": value}).model()
    modelio.save(model, tmp_path / MODEL)
    prepend = [""] if classes[0] else []
    charset = {"source": "metadata", "metadata_key": "dict", "prepend": prepend}
    params = ModelParams.model_validate(reader_params(reader, charset=charset))
    assert load_source(params)[2] == [*prepend, *classes]


def test_contract_json_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    case = CASES["text_dictionary_space_casefold"]
    source = model_stage(tmp_path, case)
    contract = read_contract(source)
    assert contract.dump() == json.loads((source / "contract.json").read_text())
    meta = modelio.spec(modelio.load(source / "model.onnx"))
    assert meta.charset == list(case.reader.classes)
    assert (meta.layout, meta.blank, meta.kind) == ("BTC", 0, "logits")
    assert np.isclose(contract.input.norm.scale, 255.0)
