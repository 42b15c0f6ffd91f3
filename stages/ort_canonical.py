"""Canonical bytes for an ORT-format model: the same graph always gives the same file.

onnxruntime's .ort writer places its flatbuffer objects in an order that follows memory
addresses, so the same model converts to different bytes in another checkout folder, with
another CPU's packed weights or under QEMU (measured: four layouts of low's model). This
rewrites the buffer depth-first, in field order, from a schema read off onnxruntime's own
generated flatbuffer readers (`ort_flatbuffers_py`, shipped in the pinned wheel). Vectors keep
their element order, every field keeps its presence and every scalar, string and raw tensor
byte is copied, so onnxruntime reads exactly what the converter wrote; only the placement
changes. Strings are shared by content, as the converter shares them.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
from flatbuffers import number_types
from flatbuffers.table import Table

FBS = "onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs"
ROOT = "InferenceSession"
IDENTIFIER = b"ORTM"
# the schema's one union, TypeInfo.value (vtable offset 8): its type values and their tables
UNIONS = {("TypeInfo", 8): {1: "TensorTypeAndShape", 2: "SequenceType", 3: "MapType"}}


@dataclass(frozen=True)
class Field:
    """One field of a table, as its generated accessor reads it."""

    slot: int  # vtable entry: (offset - 4) / 2
    kind: str  # scalar string table struct union vec_scalar vec_string vec_table vec_struct
    of: str = ""  # the scalar's flags name (Int32, ...) or the table's or struct's name
    size: int = 0  # vector element bytes


def canonical_ort(data: bytes) -> bytes:
    """The canonical bytes of an .ort file: equal for equal content, whatever wrote it."""
    if data[4:8] != IDENTIFIER:
        raise ValueError("not an ORT-format model (no 'ORTM' file identifier)")
    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.ForceDefaults(True)  # a field present in the input stays present
    builder.Finish(_table(builder, ROOT, Table(bytearray(data), root)), IDENTIFIER)
    return bytes(builder.Output())


# ---------------------------------------------------------------------------- the schema


def _source(name: str) -> str:
    return Path(importlib.import_module(f"{FBS}.{name}").__file__).read_text()


@functools.cache
def schema(table: str) -> tuple[Field, ...]:
    """The fields of `table`, by slot, parsed from its generated reader's accessors."""
    parts = re.split(r"\n    def (\w+)\(self", _source(table))
    found = (_field(table, parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2))
    return tuple(sorted((f for f in found if f is not None), key=lambda f: f.slot))


def _field(table: str, name: str, body: str) -> Field | None:
    offset = re.search(r"self\._tab\.Offset\((\d+)\)", body)
    if offset is None or name.endswith(("Length", "IsNone", "AsNumpy")):
        return None
    vt = int(offset.group(1))
    slot = (vt - 4) // 2
    typ = re.search(r"import (\w+)\n", body)
    scalar = re.search(r"number_types\.(\w+)Flags, [ao] \+", body)
    if "self._tab.Union(" in body:
        if (table, vt) not in UNIONS:
            raise ValueError(f"{table}.{name}: a union ort_canonical does not know")
        return Field(slot, "union")
    if "self._tab.Vector(o)" in body:
        if "self._tab.String(a" in body:
            return Field(slot, "vec_string")
        if scalar:
            flags = getattr(number_types, scalar.group(1) + "Flags")
            return Field(slot, "vec_scalar", scalar.group(1), flags.bytewidth)
        if "Indirect(x)" in body and typ:
            return Field(slot, "vec_table", typ.group(1))
        if typ:
            return Field(slot, "vec_struct", typ.group(1), struct_layout(typ.group(1))[1])
    elif "self._tab.String(o" in body:
        return Field(slot, "string")
    elif scalar:
        return Field(slot, "scalar", scalar.group(1))
    elif "Indirect(o + self._tab.Pos)" in body and typ:
        return Field(slot, "table", typ.group(1))
    elif "x = o + self._tab.Pos" in body and typ:
        return Field(slot, "struct", typ.group(1))
    raise ValueError(f"{table}.{name}: an accessor ort_canonical does not know")


@functools.cache
def struct_layout(name: str) -> tuple[int, int]:
    """(alignment, bytes) of a struct, from its generated Create function's Prep."""
    prep = re.search(r"builder\.Prep\((\d+), (\d+)\)", _source(name))
    if prep is None:
        raise ValueError(f"{name}: no struct layout in its generated module")
    return int(prep.group(1)), int(prep.group(2))


# ---------------------------------------------------------------------------- the writer


def _table(builder: flatbuffers.Builder, table: str, tab: Table) -> int:
    """Every child in field order, then the table; returns the table's offset."""
    fields = [(f, tab.Offset(4 + 2 * f.slot)) for f in schema(table)]
    present = [(f, o) for f, o in fields if o]
    children = {
        f.slot: _child(builder, table, f, tab, o)
        for f, o in present
        if f.kind not in ("scalar", "struct")
    }
    builder.StartObject(max((f.slot for f, _ in fields), default=-1) + 1)
    for f, o in present:
        if f.kind == "scalar":
            value = tab.Get(getattr(number_types, f.of + "Flags"), o + tab.Pos)
            getattr(builder, f"Prepend{f.of}Slot")(f.slot, value, 0)
        elif f.kind == "struct":
            align, size = struct_layout(f.of)
            builder.Prep(align, size)
            _place(builder, bytes(tab.Bytes[o + tab.Pos : o + tab.Pos + size]))
            builder.PrependStructSlot(f.slot, builder.Offset(), 0)
        else:
            builder.PrependUOffsetTRelativeSlot(f.slot, children[f.slot], 0)
    return builder.EndObject()


def _child(builder: flatbuffers.Builder, table: str, f: Field, tab: Table, o: int) -> int:
    if f.kind == "string":
        return builder.CreateSharedString(tab.String(o + tab.Pos))
    if f.kind == "table":
        return _table(builder, f.of, Table(tab.Bytes, tab.Indirect(o + tab.Pos)))
    if f.kind == "union":
        kind = tab.Get(number_types.Uint8Flags, tab.Offset(4 + 2 * (f.slot - 1)) + tab.Pos)
        chosen = UNIONS[(table, 4 + 2 * f.slot)][kind]
        return _table(builder, chosen, Table(tab.Bytes, tab.Indirect(o + tab.Pos)))
    start, n = tab.Vector(o), tab.VectorLen(o)
    if f.kind == "vec_string":
        strings = [builder.CreateSharedString(tab.String(start + 4 * j)) for j in range(n)]
        return _offsets(builder, strings)
    if f.kind == "vec_table":
        tables = [_table(builder, f.of, Table(tab.Bytes, tab.Indirect(start + 4 * j)))
                  for j in range(n)]  # fmt: skip
        return _offsets(builder, tables)
    align = struct_layout(f.of)[0] if f.kind == "vec_struct" else f.size
    builder.StartVector(f.size, n, align)
    _place(builder, bytes(tab.Bytes[start : start + n * f.size]))
    return builder.EndVector()


def _offsets(builder: flatbuffers.Builder, items: list[int]) -> int:
    builder.StartVector(4, len(items), 4)
    for item in reversed(items):
        builder.PrependUOffsetTRelative(item)
    return builder.EndVector()


def _place(builder: flatbuffers.Builder, data: bytes) -> None:
    """Raw little-endian bytes in the space the caller prepared (Prep or StartVector)."""
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
