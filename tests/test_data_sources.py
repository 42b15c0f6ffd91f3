"""Data sources: the split format, synthetic sources, and folders of the user's own labeled
images (labels, stable hash splits, and every bad input with its message, nothing written)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import builders
import numpy as np
import pytest
from PIL import Image

from ocr_bundles_runtime.preprocess import Preprocess
from stages.data import clean, dataset
from stages.data.dataset import Sample, read_split, write_split
from stages.data.folder import FolderSource, label_from_name, split_of
from stages.data.sources import SyntheticSource, check_glyphs, write_folder, write_synthetic
from stages.errors import DataError
from stages.records import EvalRecord, SourceSummary, read_record
from stages.scoring import Scoring

ALLOWED = "abcdefghijklmnopqrstuvwxyz0123456789"
NORM = Scoring().normalize
SPEC = Preprocess()  # the contract's preprocessing (ddddocr's: the defaults)
STYLE = clean.CaptchaStyle(width=48, height=16, alphabet="abc123", font_size=(12, 14))


def png(text: str = "ab", seed: int = 0) -> bytes:
    return clean.sample(STYLE.model_copy(update={"alphabet": text}), seed, 0)[1]


def folder(tmp_path: Path, files: dict[str, bytes], labels: dict[str, str] | None = None) -> Path:
    root = tmp_path / "mine"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    if labels is not None:
        (root / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    return root


def many(n: int) -> dict[str, bytes]:
    """n distinct labeled images named '<label>_<i>.png'."""
    out = {}
    for i in range(n):
        label, data = clean.sample(STYLE, 5, i)
        out[f"{label}_{i:04d}.png"] = data
    return out


# ---------------------------------------------------------------------------- split files


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    samples = [Sample(f"{i:05d}.png", *clean.sample(STYLE, 11, i)) for i in range(4)]
    assert write_split(tmp_path / "train", samples) == 4
    pairs = read_split(tmp_path / "train")
    assert [(p.name, p.read_bytes(), t) for p, t in pairs] == [
        (s.name, s.data, s.label) for s in samples
    ]
    labels = json.loads((tmp_path / "train" / "labels.json").read_text(encoding="utf-8"))
    assert labels == {s.name: s.label for s in samples}


def test_write_refuses_bad_names_and_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="non-empty"):
        write_split(tmp_path / "a", [Sample("x.png", "", b"x")])
    with pytest.raises(DataError, match="plain, unique"):
        write_split(tmp_path / "b", [Sample("../x.png", "a", b"x")])
    with pytest.raises(DataError, match="plain, unique"):
        write_split(tmp_path / "c", [Sample("x.png", "a", b"x"), Sample("x.png", "b", b"y")])


def test_read_split_names_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "labels.json"))):
        read_split(tmp_path)


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"00000.png": 3}', '{"../x.png": "a"}']
)
def test_read_split_names_invalid_labels_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "labels.json").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "labels.json"))):
        read_split(tmp_path)


def test_read_split_names_missing_image(tmp_path: Path) -> None:
    write_split(tmp_path / "s", [Sample("a.png", "a", b"x"), Sample("b.png", "b", b"y")])
    (tmp_path / "s" / "b.png").unlink()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "s" / "b.png"))):
        read_split(tmp_path / "s")


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_source_writes_every_split_and_a_summary(tmp_path: Path) -> None:
    source = SyntheticSource(seed=3, calib=2, val=3, eval=4, style={"generator": "hard"})
    summary = write_synthetic("hard", source, "abc", tmp_path / "hard")
    assert summary.splits == {"calib": 2, "val": 3, "eval": 4}
    record = read_record(tmp_path / "hard" / dataset.SUMMARY_FILE, SourceSummary)
    assert record.generator == "hard" and record.splits == summary.splits
    labels = [
        t for split in ("calib", "val", "eval") for _, t in read_split(tmp_path / "hard" / split)
    ]
    assert labels and all(set(t) <= set("abc") for t in labels)  # the alphabet follows charset


def test_synthetic_source_is_byte_identical_twice(tmp_path: Path) -> None:
    source = SyntheticSource(seed=9, calib=1, val=1, eval=3)
    write_synthetic("c", source, "xyz", tmp_path / "a")
    write_synthetic("c", source, "xyz", tmp_path / "b")
    for split in ("calib", "val", "eval"):
        a = sorted((p.name, p.read_bytes()) for p in (tmp_path / "a" / split).iterdir())
        b = sorted((p.name, p.read_bytes()) for p in (tmp_path / "b" / split).iterdir())
        assert a == b


def test_missing_glyphs_are_an_error_before_anything_is_written(tmp_path: Path) -> None:
    source = SyntheticSource(seed=1, calib=1, val=1, eval=1)
    with pytest.raises(DataError, match="fonts lack glyphs") as info:
        write_synthetic("cjk", source, "中文", tmp_path / "cjk")
    assert "data.folders" in str(info.value)  # says what to do instead
    assert not (tmp_path / "cjk").exists()


def test_check_glyphs_accepts_latin() -> None:
    check_glyphs(STYLE, "x")  # no exception


# ---------------------------------------------------------------------------- folder source


@pytest.mark.parametrize(
    ("name", "label"), [("x7k2p_0031.png", "x7k2p"), ("x7k2p.png", "x7k2p"), ("ab_c_d.jpg", "ab")]
)
def test_label_from_file_name(name: str, label: str) -> None:
    assert label_from_name(name) == label


def test_split_by_name_hash_is_stable_as_the_folder_grows() -> None:
    names = [f"img{i}.png" for i in range(400)]
    first = {n: split_of(n, 0.15, 0.25) for n in names}
    more = {n: split_of(n, 0.15, 0.25) for n in [*names, *(f"new{i}.png" for i in range(400))]}
    assert all(more[n] == s for n, s in first.items())  # nothing already there moved
    counts = {s: list(first.values()).count(s) for s in ("calib", "val", "eval")}
    assert 30 < counts["calib"] < 90 and 70 < counts["val"] < 135 and counts["eval"] > 200


def test_folder_with_file_name_labels(tmp_path: Path) -> None:
    root = folder(tmp_path, {**many(40), "README.txt": b"notes"})
    summary = write_folder(
        "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
    )
    assert sum(summary.splits.values()) == 40
    assert summary.ignored == ["README.txt"]
    for split in ("calib", "val", "eval"):
        for path, label in read_split(tmp_path / "out" / split):
            assert path.name.split("_")[0] == label
            assert split_of(path.name, 0.15, 0.25) == split


def test_folder_with_labels_json_keeps_names_and_formats(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png("c1"))).save(jpeg, format="JPEG")
    files = {"a.png": png("ab"), "b.jpg": jpeg.getvalue()}
    root = folder(tmp_path, files, labels={"a.png": "ab", "b.jpg": "c1"})
    write_folder(
        "mine",
        FolderSource(path=str(root), calib=0, val=0),
        ALLOWED,
        NORM,
        tmp_path / "o",
        spec=SPEC,
    )
    assert {p.name: t for p, t in read_split(tmp_path / "o" / "eval")} == {
        "a.png": "ab",
        "b.jpg": "c1",
    }


def test_labels_outside_the_charset_name_the_files_and_the_setting(tmp_path: Path) -> None:
    files = {**many(6), "AB_1.png": png("ab", 1), "a-b_2.png": png("ab", 2)}
    root = folder(tmp_path, files)
    with pytest.raises(DataError) as info:
        write_folder(
            "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
        )
    msg = str(info.value)
    assert "data.folders.mine" in msg and "AB_1.png" in msg and "a-b_2.png" in msg
    assert "'A'" in msg and "'-'" in msg and "charset" in msg and "casefold" in msg
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_space_class_the_charset_allows_is_allowed_inside_labels(tmp_path: Path) -> None:
    # text lines: the model's dictionary ends in a space class and labels hold words
    files = {"a.png": png("ab"), "b.png": png("c1")}
    root = folder(tmp_path, files, labels={"a.png": "ab cd", "b.png": "c 1"})
    source = FolderSource(path=str(root), calib=0, val=0)
    summary = write_folder("lines", source, ALLOWED + " ", NORM, tmp_path / "o", spec=SPEC)
    assert sum(summary.splits.values()) == 2
    with pytest.raises(DataError, match=r"characters \[' '\] outside the charset"):
        write_folder("lines", source, ALLOWED, NORM, tmp_path / "p", spec=SPEC)


def test_casefold_scoring_accepts_upper_case_labels(tmp_path: Path) -> None:
    root = folder(tmp_path, {"AB12_1.png": png("ab", 1), **many(3)})
    norm = Scoring(casefold=True).normalize
    summary = write_folder(
        "mine", FolderSource(path=str(root)), ALLOWED, norm, tmp_path / "out", spec=SPEC
    )
    assert sum(summary.splits.values()) == 4


def test_unreadable_images_are_skipped_with_their_code(tmp_path: Path) -> None:
    files = {**many(5), "bad_1.png": b"not an image", "empty_2.png": b""}
    root = folder(tmp_path, files)
    summary = write_folder(
        "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
    )
    assert sum(summary.splits.values()) == 5
    skipped = {s["name"]: s["code"] for s in summary.skipped}
    assert skipped == {"bad_1.png": "E_DECODE", "empty_2.png": "E_EMPTY"}


def test_the_scan_reads_images_under_the_contracts_preprocessing(tmp_path: Path) -> None:
    # the contract's max_pixels, not the defaults': an image the recognizer would refuse is
    # skipped here with the runtime's code, so it never reaches calibration or eval
    big = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(big, format="PNG")
    root = folder(tmp_path, {**many(4), "ab_big.png": big.getvalue()})
    source = FolderSource(path=str(root))
    small = Preprocess(max_pixels=48 * 16)  # the many() images are 48 x 16
    summary = write_folder("mine", source, ALLOWED, NORM, tmp_path / "out", spec=small)
    assert [(s["name"], s["code"]) for s in summary.skipped] == [("ab_big.png", "E_TOO_LARGE")]
    assert sum(summary.splits.values()) == 4
    summary = write_folder("mine", source, ALLOWED, NORM, tmp_path / "all", spec=SPEC)
    assert summary.skipped == [] and sum(summary.splits.values()) == 5


def test_duplicate_images_keep_one_copy_so_eval_never_holds_a_calibration_image(
    tmp_path: Path,
) -> None:
    images = many(30)
    first = sorted(images)[0]
    dupes = {f"{first.split('_')[0]}_dup{i}.png": images[first] for i in range(20)}
    conflict = {"zz_9.png": images[first]}  # same bytes, another label
    root = folder(tmp_path, {**images, **dupes, **conflict})
    summary = write_folder(
        "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
    )
    assert sum(summary.splits.values()) == 30
    assert len(summary.duplicates) == 21
    assert [d["label_conflict"] for d in summary.duplicates if d["name"] == "zz_9.png"] == [True]
    blobs = [
        p.read_bytes()
        for s in ("calib", "val", "eval")
        for p, _ in read_split(tmp_path / "out" / s)
    ]
    assert len(blobs) == len(set(blobs))


@pytest.mark.parametrize(
    ("files", "labels", "words"),
    [
        ({}, None, "no readable labeled image"),
        ({"_0001.png": b"x"}, None, "carry no label"),
        ({"a.png": b"x"}, {"a.png": ""}, "non-empty"),
    ],
)
def test_folder_errors_name_the_problem_and_write_nothing(
    tmp_path: Path, files: dict, labels: dict | None, words: str
) -> None:
    root = folder(tmp_path, files, labels)
    with pytest.raises(DataError, match=words):
        write_folder(
            "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
        )
    assert not (tmp_path / "out").exists()


def test_missing_folder_names_the_params_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.folders\.mine\.path"):
        write_folder(
            "mine",
            FolderSource(path=str(tmp_path / "nope")),
            ALLOWED,
            NORM,
            tmp_path / "o",
            spec=SPEC,
        )


def test_a_class_builds_and_evaluates_from_a_folder_source(tmp_path: Path) -> None:
    """The issue's acceptance test: own images in a temp folder -> data -> build -> evaluate."""
    labeled = {}
    for i in range(40):
        label, data = clean.sample(builders.STYLE, 77, i)
        labeled[f"{label}_{i:03d}.png"] = data
    root = folder(tmp_path, labeled)
    write_folder(
        "mysite",
        FolderSource(path=str(root)),
        "abcdef",
        NORM,
        tmp_path / "data" / "mysite",
        spec=SPEC,
    )
    builders.write_source(tmp_path)
    build = builders.build_class(
        tmp_path, "t", [{"fix_output_shape": {}}, {"quantize_dynamic": {}}], sources=("mysite",)
    )
    assert (build / "model.onnx").is_file()
    record = read_record(builders.evaluate_class(tmp_path, "t", sources=("mysite",)), EvalRecord)
    assert list(record.sets) == ["mysite"] and record.sets["mysite"] > 0
    assert set(record.variants) == {
        "reference",
        "01-fix_output_shape",
        "02-quantize_dynamic",
        "final",
    }
    assert 0 <= record.variants["final"].sets["mysite"].accuracy <= 1


def test_images_are_decoded_by_the_runtime(tmp_path: Path) -> None:
    # a 16-bit grayscale PNG: the runtime decodes it, so the folder keeps it
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 16).reshape(16, 64) * 40).astype(np.uint16)).save(buf, "PNG")
    root = folder(tmp_path, {"ab_1.png": buf.getvalue()})
    summary = write_folder(
        "mine", FolderSource(path=str(root)), ALLOWED, NORM, tmp_path / "out", spec=SPEC
    )
    assert summary.skipped == []
