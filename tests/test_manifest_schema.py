"""manifest.json's JSON Schema: generated from the record, committed, and agreeing with the
runtime's reader on what a valid manifest is."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import builders
import jsonschema
import pytest

from ocr_bundles_runtime.manifest import parse_bundle
from stages.errors import PipelineError
from stages.manifest_schema import SCHEMA_FILE, manifest_schema, schema_text

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builders.tiny_bundle(tmp_path_factory.mktemp("schema"), bundle={"fallback": "float"})


def validator() -> jsonschema.Draft202012Validator:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_generated_one():
    assert (ROOT / SCHEMA_FILE).read_text() == schema_text(), (
        "runtime/manifest.schema.json is stale: run python -m stages manifest-schema"
    )


def test_a_written_manifest_is_valid(bundle: Path):
    doc = json.loads((bundle / "manifest.json").read_text())
    validator().validate(doc)
    assert doc["models"]["fallback"]["optional"] is True  # the optional parts are covered too


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("format_version", 5),
        ("input.feed", "jpeg"),
        ("input.shape", "1x1x64xW"),
        ("input.shape", [1, "chanels", "height", "width"]),
        ("output.layout", "CTB"),
        ("output.blank", "0"),
        ("preprocess.interpolation", "bicubic"),
        ("runtime.int8_kernels", "fastest"),
        ("confidence_threshold", "high"),
        ("surprise", 1),
        ("input.surprise", 1),
        ("files.charset.json.sha256", 7),
    ],
)
def test_schema_and_reader_refuse_the_same_manifests(bundle: Path, tmp_path: Path, path, value):
    doc = json.loads((bundle / "manifest.json").read_text())
    if path.startswith("files.charset.json"):
        bad = copy.deepcopy(doc)
        bad["files"]["charset.json"]["sha256"] = value
    else:
        bad = _set(doc, path, value)
    assert list(validator().iter_errors(bad)), f"the schema accepts {path}={value!r}"
    folder = tmp_path / "b"
    folder.mkdir()
    for p in bundle.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(PipelineError):
        parse_bundle(folder)
