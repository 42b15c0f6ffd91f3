"""ort_canonical: one byte layout per .ort content, read by onnxruntime exactly as the original."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnxruntime.quantization import quantize_dynamic

from ocr_bundles_runtime.session import Runtime, session_options
from stages.ort_canonical import canonical_ort

# Writes the .ort of argv[1] to argv[2] after holding argv[3]-byte blocks: the heap then lies
# elsewhere, and onnxruntime's writer, whose object order follows addresses, lays out anew.
CONVERT = """
import sys, onnxruntime as ort
so = ort.SessionOptions()
so.optimized_model_filepath = sys.argv[2]
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
so.log_severity_level = 3
so.add_session_config_entry("session.save_model_format", "ORT")
held = [bytearray(int(sys.argv[3])) for _ in range(50)]
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
"""


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One int8 model written by onnxruntime in three heap layouts."""
    root = tmp_path_factory.mktemp("ort")
    onnx.save(tiny.tiny_ctc(), root / "float.onnx")
    quantize_dynamic(str(root / "float.onnx"), str(root / "int8.onnx"))
    out = []
    for held in (10, 1000, 100_000):
        path = root / f"held{held}.ort"
        subprocess.run([sys.executable, "-c", CONVERT, str(root / "int8.onnx"), str(path),
                        str(held)], check=True)  # fmt: skip
        out.append(path)
    return out


def test_every_layout_of_one_model_gives_the_same_bytes(layouts: list[Path]):
    raw = [p.read_bytes() for p in layouts]
    assert len(set(raw)) > 1, "onnxruntime now writes one layout: ort_canonical may go"
    canonical = {canonical_ort(b) for b in raw}
    assert len(canonical) == 1
    (only,) = canonical
    assert canonical_ort(only) == only  # a fixed point: rewriting again changes nothing


@pytest.mark.parametrize("direct", [False, True], ids=["copied", "initializers_in_place"])
def test_onnxruntime_reads_the_canonical_file_as_the_original(
    layouts: list[Path], tmp_path: Path, direct: bool
):
    canonical = tmp_path / "canonical.ort"
    canonical.write_bytes(canonical_ort(layouts[0].read_bytes()))
    so = session_options(Runtime(ort_bytes_for_initializers=direct), ort_format=True)
    outputs = []
    for path in (layouts[0], canonical):
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs.append([session.run(None, {name: x})[0] for x in tiny.inputs(3)])
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_that_is_not_ort_format_is_refused(tmp_path: Path):
    onnx.save(tiny.tiny_ctc(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not an ORT-format model"):
        canonical_ort((tmp_path / "m.onnx").read_bytes())
