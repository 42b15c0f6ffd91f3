"""The JSON Schema of a bundle's manifest.json, generated from the typed record the bundle stage
writes and every runtime reads (ocr_bundles_runtime/manifest_record.py), never written by hand.

`python -m stages manifest-schema` rewrites runtime/manifest.schema.json; a test fails when
the committed file and the record disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from ocr_bundles_runtime.manifest_record import FORMAT, FORMAT_VERSION, BundleManifest

from .atomic import write_bytes

SCHEMA_FILE = Path("runtime") / "manifest.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def manifest_schema() -> dict[str, Any]:
    """The schema, with the format name and version pinned as constants."""
    schema = TypeAdapter(BundleManifest).json_schema()
    schema["properties"]["format"] = {"const": FORMAT}
    schema["properties"]["format_version"] = {"const": FORMAT_VERSION}
    return {
        "$schema": DIALECT,
        "$id": f"{FORMAT}/manifest/v{FORMAT_VERSION}",
        **schema,
        "title": f"{FORMAT} manifest.json, format version {FORMAT_VERSION}",
    }


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    write_bytes(path, schema_text().encode())
    return path
