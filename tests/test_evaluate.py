"""Scoring: edit distance, accuracy/CER/by-length, agreement, and a tiny end-to-end evaluation."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import tiny

import stages.passes  # noqa: F401 - registers fix_output_shape
from stages import evaluate, modelio, registry
from stages.build import run_passes, write_build
from stages.data import CaptchaStyle, make_split, write_split
from stages.decode import decode
from stages.evaluate import agreement, edit_distance, score
from stages.inference import Runtime
from stages.passes.fix_output_shape import FixOutputShapeOptions
from stages.preprocess import Preprocess, preprocess
from stages.recipe import PassStep, Recipe

# ---------------------------------------------------------------------------- edit distance


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("abc", "abc", 0),
        ("abc", "", 3),
        ("", "ab", 2),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("ab", "ba", 2),  # a transposition is two edits in Levenshtein distance
        ("abcd", "abd", 1),
        ("abc", "xbz", 2),
        ("aaaa", "a", 3),
    ],
)
def test_edit_distance_cases(a, b, d):
    assert edit_distance(a, b) == d
    assert edit_distance(b, a) == d


def _reference_distance(a: str, b: str) -> int:
    @functools.cache
    def dist(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(
            dist(i - 1, j) + 1, dist(i, j - 1) + 1, dist(i - 1, j - 1) + (a[i - 1] != b[j - 1])
        )

    return dist(len(a), len(b))


def test_edit_distance_matches_recursive_reference():
    rng = np.random.default_rng(7)
    for _ in range(300):
        a = "".join(rng.choice(list("abc"), size=int(rng.integers(0, 8))))
        b = "".join(rng.choice(list("abc"), size=int(rng.integers(0, 8))))
        assert edit_distance(a, b) == _reference_distance(a, b), (a, b)


# ---------------------------------------------------------------------------- score


def test_score_on_hand_data():
    preds = ["ab", "abc", "x", "abcd", "hello"]
    labels = ["ab", "abd", "y", "abcd", "hallo"]
    out = score(preds, labels)
    assert out["accuracy"] == 0.4  # 2 of 5 exact
    assert out["cer"] == round(3 / 15, 5)  # 0 + 1 + 1 + 0 + 1 edits over 2+3+1+4+5 chars
    assert out["by_length"] == {
        "1": {"n": 1, "accuracy": 0.0},
        "2": {"n": 1, "accuracy": 1.0},
        "3": {"n": 1, "accuracy": 0.0},
        "4": {"n": 1, "accuracy": 1.0},
        "5": {"n": 1, "accuracy": 0.0},
    }


def test_score_groups_by_label_length_in_numeric_order():
    labels = ["abcdefghij", "abcd", "abce", "wxyz", "abcdefghi"]
    preds = ["abcdefghij", "abcd", "abcf", "wxyz", ""]
    out = score(preds, labels)
    assert list(out["by_length"]) == ["4", "9", "10"]
    assert out["by_length"]["4"] == {"n": 3, "accuracy": round(2 / 3, 5)}
    assert out["by_length"]["9"] == {"n": 1, "accuracy": 0.0}
    assert out["by_length"]["10"] == {"n": 1, "accuracy": 1.0}
    assert out["accuracy"] == 0.6
    assert out["cer"] == round((1 + 9) / 31, 5)
    json.dumps(out)  # written to eval.json as is


def test_cer_counts_insertions_and_can_exceed_one():
    assert score(["abc"], ["a"])["cer"] == 2.0
    assert score([""], ["abcd"])["cer"] == 1.0


def test_perfect_and_all_wrong():
    assert score(["a", "bc"], ["a", "bc"]) == {
        "accuracy": 1.0,
        "cer": 0.0,
        "by_length": {"1": {"n": 1, "accuracy": 1.0}, "2": {"n": 1, "accuracy": 1.0}},
    }
    assert score(["b", "cd"], ["a", "bc"])["accuracy"] == 0.0


@pytest.mark.parametrize(("preds", "labels"), [(["a"], ["a", "b"]), (["a", "b"], ["a"]), ([], [])])
def test_score_length_mismatch_or_empty_raises(preds, labels):
    with pytest.raises(ValueError, match=f"{len(preds)} predictions for {len(labels)} labels"):
        score(preds, labels)


def test_agreement():
    assert agreement(["a", "b", "c", "d"], ["a", "b", "c", "x"]) == 0.75
    assert agreement(["a"], ["a"]) == 1.0
    assert agreement(["a", "b", "c"], ["x", "y", "c"]) == round(1 / 3, 5)
    with pytest.raises(ValueError):
        agreement(["a", "b"], ["a"])


# ---------------------------------------------------------------------------- tiny end to end


def _tiny_source(tmp_path):
    source = tmp_path / "models" / "source"
    model = tiny.tiny_ctc(wrong_output_shape=True)
    modelio.save(model, source / "model.onnx")
    return source, model


def test_predict_decodes_each_input(tmp_path):
    source, model = _tiny_source(tmp_path)
    xs = tiny.inputs(5)
    preds, p50 = evaluate.predict(source / "model.onnx", xs, Runtime())
    ctc = modelio.spec(model)
    assert preds == [decode(tiny.run(model, x), ctc.charset).text for x in xs]
    assert isinstance(p50, float) and p50 >= 0


def test_evaluate_build_on_a_tiny_model(tmp_path):
    source, model = _tiny_source(tmp_path)
    data = tmp_path / "data"
    write_split(data / "eval", make_split(CaptchaStyle(), 3, seed=11))
    spec = Preprocess(height=tiny.HEIGHT)
    recipe = Recipe(
        description="tiny",
        passes=[PassStep("fix_output_shape", FixOutputShapeOptions())],
        preprocess=spec,
    )
    calib = [preprocess(png, spec) for _, png in make_split(CaptchaStyle(), 2, seed=12)]
    results = run_passes(model, recipe, registry.PassContext(calibration=calib))
    build = tmp_path / "build" / "tiny" / "model"
    write_build(build, recipe, results, "tiny")

    out = evaluate.evaluate_build("tiny", source, build, data, recipe, spec)
    assert out["target"] == "tiny"
    assert out["images"] == 3
    assert out["threads"] == 1
    variants = out["variants"]
    assert list(variants) == ["reference", "01-fix_output_shape", "final"]
    for v in variants.values():
        assert set(v) >= {"size_mb", "accuracy", "cer", "by_length", "agreement", "model_p50_ms"}
        assert 0.0 <= v["accuracy"] <= 1.0
    # an exact pass and the same preprocessing: identical predictions
    assert variants["final"]["agreement"] == 1.0
    assert variants["final"]["accuracy"] == variants["reference"]["accuracy"]
    assert variants["final"]["size_mb"] == round(modelio.size_mb(build / "model.onnx"), 3)
    json.dumps(out)
