"""Atomic writes: readers see the old output or the new one, never half of one."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from stages.atomic import atomic_dir, write_bytes, write_json


def test_write_bytes_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by the app's user


def test_write_json_creates_parents_and_keeps_unicode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    write_json(target, {"charset": ["", "中", "\u3000"]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"charset": ["", "中", "\u3000"]}
    assert "中" in target.read_text(encoding="utf-8")


def test_atomic_dir_replaces_the_folder_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp != out and tmp.parent == out.parent
        (tmp / "new.txt").write_text("new")
        assert (out / "stale.txt").exists()  # readers still see the old folder meanwhile
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_keeps_the_old_folder_and_cleans_up_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["kept.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_creates_a_missing_target(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("x")
    assert (out / "x").read_text() == "x"
