"""Conformance vectors: the bundle stage writes them, every runtime checks itself with them."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import builders
import pytest
from PIL import Image

from ocr_bundles_runtime import Recognizer
from ocr_bundles_runtime.conformance import Steps, Vector, compare, read_vectors, steps_of
from ocr_bundles_runtime.manifest import read_verified
from ocr_bundles_runtime.preprocess import model_input
from stages import conformance_vectors

STATIC = [{"fix_output_shape": {}}, {"quantize_static": {}}]
QUANTIZED = [
    {"fix_output_shape": {}},
    {"prune_charset": {"chars": "abcde"}},
    {"quantize_dynamic": {}},
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "float": builders.tiny_bundle(tmp_path_factory.mktemp("float"), target="float"),
        "int8": builders.tiny_bundle(tmp_path_factory.mktemp("int8"), passes=QUANTIZED),
    }


def vectors_doc(bundle: Path) -> dict:
    return json.loads((bundle / "conformance.json").read_text())


def rewrite(bundle: Path, name: str, data: bytes) -> None:
    """Replace a bundle file and its hash in the manifest: a consistent but wrong bundle."""
    (bundle / name).write_bytes(data)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(doc))


def copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    out.mkdir()
    for p in bundle.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def test_every_bundle_passes_its_own_vectors(bundles: dict[str, Path]):
    for bundle in bundles.values():
        report = Recognizer.from_bundle(bundle).check()
        assert report.ok, report.reason
        assert len(report.vectors) == 8 and all(v.ok for v in report.vectors)


def test_vectors_cover_three_pixel_formats(bundles: dict[str, Path]):
    doc = vectors_doc(bundles["int8"])
    modes = {Image.open(bundles["int8"] / v["image"]).mode for v in doc["vectors"]}
    assert modes == {"RGB", "L", "RGBA"}


def test_tolerance_is_the_measured_float_gap(bundles: dict[str, Path]):
    # the float bundle's model is its own float reference: the floor; int8 measures a gap
    assert vectors_doc(bundles["float"])["tolerance"] == conformance_vectors.FLOOR
    tol = vectors_doc(bundles["int8"])["tolerance"]
    assert tol >= conformance_vectors.FLOOR


def test_a_wrong_expected_text_fails_the_check(bundles: dict[str, Path], tmp_path: Path):
    bundle = copy(bundles["int8"], tmp_path)
    doc = vectors_doc(bundle)
    doc["vectors"][0]["text"] += "x"
    rewrite(bundle, "conformance.json", json.dumps(doc).encode())
    report = Recognizer.from_bundle(bundle).check()
    assert not report.ok and "conformance-00.png" in report.reason and "expected" in report.reason
    cli = [sys.executable, "-m", "ocr_bundles_runtime", "--bundle", str(bundle), "--check"]
    assert subprocess.run(cli, capture_output=True).returncode == 5


def test_a_port_that_preprocesses_differently_fails(bundles: dict[str, Path], tmp_path: Path):
    # what a wrong port looks like to the check: the same vector image, other pixels
    bundle = copy(bundles["float"], tmp_path)
    name = vectors_doc(bundle)["vectors"][0]["image"]
    im = Image.open(bundle / name).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    rewrite(bundle, name, buf.getvalue())
    report = Recognizer.from_bundle(bundle).check()
    assert not report.ok and report.vectors[0].reason


def test_the_cli_check_passes_on_a_good_bundle(bundles: dict[str, Path]):
    bundle = str(bundles["float"])
    cli = [sys.executable, "-m", "ocr_bundles_runtime", "--bundle", bundle, "--check"]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "healthy" in proc.stderr and proc.stdout.count("\tok\t") == 8


def test_a_bundle_without_vectors_is_not_healthy(bundles: dict[str, Path], tmp_path: Path):
    bundle = copy(bundles["float"], tmp_path)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["conformance"] = None
    (bundle / "manifest.json").write_text(json.dumps(doc))
    report = Recognizer.from_bundle(bundle).check()
    assert not report.ok and "no vectors" in report.reason


VECTOR = Vector("v.png", "ab", best=[1, 0, 2], value=[5.0, 4.0, 6.0], margin=[3.0, 0.1, 2.0])


@pytest.mark.parametrize(
    ("text", "steps", "reason"),
    [
        ("ab", Steps([1, 0, 2], [5.05, 3.95, 6.0], [3.0, 0.1, 2.0]), ""),
        # a near tie (margin 0.1 <= 2 t) may swap: not a failure
        ("ab", Steps([1, 3, 2], [5.0, 4.0, 6.0], [3.0, 0.1, 2.0]), ""),
        ("ab", Steps([1, 0, 3], [5.0, 4.0, 6.0], [3.0, 0.1, 2.0]), "step 2: best class"),
        ("ab", Steps([1, 0, 2], [5.0, 4.0, 6.3], [3.0, 0.1, 2.0]), "step 2: output differs"),
        ("ax", Steps([1, 0, 2], [5.0, 4.0, 6.0], [3.0, 0.1, 2.0]), "expected 'ab'"),
        ("ab", Steps([1, 0], [5.0, 4.0], [3.0, 0.1]), "2 output steps"),
    ],
)
def test_the_rule(text: str, steps: Steps, reason: str):
    got = compare(VECTOR, text, steps, tolerance=0.2)
    assert got.ok == (not reason)
    assert reason in got.reason


@pytest.fixture(scope="module")
def host_and_graph(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny source and data, two classes that differ only in bundle.preprocess."""
    root = tmp_path_factory.mktemp("feeds")
    builders.write_source(root)
    builders.write_data(root)
    out = {}
    for feed in ("host", "graph"):
        builders.build_class(root, feed, QUANTIZED, bundle={"preprocess": feed})
        builders.evaluate_class(root, feed)
        out[feed] = builders.bundle_class(root, feed)
    return out


def test_a_graph_bundle_takes_pixels_and_reads_what_the_host_bundle_reads(
    host_and_graph: dict[str, Path],
):
    import numpy as np

    host, graph = (Recognizer.from_bundle(host_and_graph[k]) for k in ("host", "graph"))
    assert (host.spec.feed, graph.spec.feed) == ("tensor", "pixels")
    doc = json.loads((host_and_graph["graph"] / "manifest.json").read_text())
    assert doc["input"]["dtype"] == "uint8" and doc["input"]["channels"] == [1, 3, 4]
    images = sorted(
        (host_and_graph["graph"].parent.parent / "data" / "clean" / "eval").glob("*.png")
    )
    assert images
    for path in images:
        (t_host, y_host), (t_graph, y_graph) = host.first_read(path), graph.first_read(path)
        assert t_host == t_graph
        np.testing.assert_array_equal(y_host, y_graph)  # the in-graph preprocessing is exact
    assert graph.check().ok


# ------------------------------------------------------------------ measured on the profiles


def candidate(name: str, gap: float = 0.1, lead: float = 5.0) -> conformance_vectors.Candidate:
    steps = Steps([1, 0], [3.0, 2.0], [lead, lead])
    return conformance_vectors.Candidate(name.encode(), "a", "a", steps, gap)


def test_images_a_profile_reads_differently_are_never_vectors():
    """`agree` sees a shortlist of the best-ranked candidates once; a None (another text on
    some profile) drops the image, a gap raises the tolerance by PROFILE_HEADROOM."""
    cands = [candidate(n) for n in "pqrstu"]  # ranked best first

    def agree(cs: list[conformance_vectors.Candidate]) -> list[float | None]:
        return [None if c.png == b"p" else 2.0 if c.png == b"q" else 0.5 for c in cs]

    [short] = conformance_vectors.agreed([[(0, c) for c in cands]], 4, agree)
    assert [c.png for _, c in short] == [b"q", b"r", b"s"]  # p dropped, t and u not run
    assert [c.profile_gap for _, c in short] == [2.0, 0.5, 0.5]
    assert conformance_vectors.tolerance([c for _, c in short]) == 3.0  # 1.5 x 2.0
    assert conformance_vectors.tolerance([candidate("x", gap=0.2)]) == 0.4  # float gap x 2


def test_the_tolerance_covers_what_the_class_profile_computes(tmp_path: Path):
    """A static int8 bundle for an emulated arm64 profile: conformance.json records the gap
    measured there, the tolerance covers it with headroom, and the vectors pass on that
    profile as the verify stage runs them."""
    from test_profiles import emulated, shipped_profiles

    from ocr_bundles_runtime.manifest import parse_bundle
    from ocr_bundles_runtime.session import session_plan
    from stages.evaluate import eval_runtime
    from stages.profiles.run import run_on

    placement = emulated("arm64")
    profile = shipped_profiles()["arm64"]
    bundle = builders.tiny_bundle(
        tmp_path, passes=STATIC, bundle={"formats": ["ort", "onnx"]}, profiles={"arm64": profile}
    )
    doc = vectors_doc(bundle)
    assert set(doc["measured"]) == {"arm64"}
    assert doc["tolerance"] >= conformance_vectors.PROFILE_HEADROOM * doc["measured"]["arm64"]
    spec = parse_bundle(bundle)
    record = read_vectors(spec)
    xs = [model_input(read_verified(spec.files, spec.manifest, v.image), spec.preprocess,
                      spec.feed) for v in record.vectors]  # fmt: skip
    plan = session_plan(eval_runtime(spec.runtime), ort_format=True)
    outs = run_on(placement, bundle / "model.ort", plan, xs, "arm64")
    for v, y in zip(record.vectors, outs, strict=True):
        result = compare(v, spec.text_of(y), steps_of(y, spec.layout), record.tolerance)
        assert result.ok, result.reason
        assert result.max_value_diff <= doc["measured"]["arm64"] + 1e-3


def test_the_tolerance_is_measured_on_emulable_profiles_only_for_integer_models(tmp_path):
    """A float model's results agree across ISAs to ~1e-5, under the tolerance floor: it is
    not emulated (high's cost ~40 s per candidate on x86-avx2 under QEMU); an int8 model is,
    on every profile QEMU emulates."""
    import tiny
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from stages import modelio
    from stages.bundle import measured_profiles
    from stages.profiles.profile import CpuProfile

    profiles = {
        "a53": CpuProfile(arch="aarch64", qemu_cpu="cortex-a53", note="emulable"),
        "vnni": CpuProfile(arch="x86_64", requires=["avx512_vnni"], note="no QEMU model"),
    }
    float_model = tiny.tiny_ctc()
    assert measured_profiles(profiles, float_model) == {}
    modelio.save(float_model, tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8)
    int8 = modelio.load(tmp_path / "q.onnx")
    assert modelio.quantized_ops(int8)
    assert list(measured_profiles(profiles, int8)) == ["a53"]
