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

from stages import conformance_vectors
from stages.runtime import Recognizer
from stages.runtime.conformance import Steps, Vector, compare

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
    cli = [sys.executable, "-m", "stages.runtime", "--bundle", str(bundle), "--check"]
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
    cli = [sys.executable, "-m", "stages.runtime", "--bundle", str(bundles["float"]), "--check"]
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
