"""Scoring: edit distance, accuracy/CER/by-length, agreement and the declared normalization."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from stages.scoring import Scoring, accuracy_change_interval, edit_distance, flips, hits
from stages.scoring import agreement as _agreement
from stages.scoring import score as _score

EXACT = Scoring(strip=False)


def score(preds, labels):
    return _score(preds, labels, EXACT)


def agreement(preds, ref):
    return _agreement(preds, ref, EXACT)


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
        "images": 2,
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


# ---------------------------------------------------------------------------- normalization


def test_strip_ignores_whitespace_at_the_ends_only():
    s = Scoring(strip=True)
    assert s.normalize("  ab c\u3000") == "ab c"
    assert _score([" ab "], ["ab"], s)["accuracy"] == 1.0
    assert _score(["a b"], ["ab"], s)["accuracy"] == 0.0  # inner spaces still count
    assert _score([" ab "], ["ab"], EXACT)["accuracy"] == 0.0


def test_casefold_compares_case_insensitively_everywhere():
    s = Scoring(casefold=True)
    assert _score(["AbC"], ["abc"], s)["accuracy"] == 1.0
    assert _score(["AbC"], ["abc"], s)["cer"] == 0.0
    assert _agreement(["AB"], ["ab"], s) == 1.0
    assert _score(["AbC"], ["abc"], Scoring())["accuracy"] == 0.0


def test_by_length_uses_the_normalized_label():
    out = _score(["ab"], [" ab "], Scoring(strip=True))
    assert out["by_length"] == {"2": {"n": 1, "accuracy": 1.0}}


def test_flips_count_both_ways_against_the_other_model():
    labels = ["ab", "cd", "ef", "gh", "ij"]
    other = ["ab", "cd", "xx", "yy", "ij"]  # right, right, wrong, wrong, right
    preds = ["ab", "zz", "ef", "yy", " ij "]  # right, wrong, right, same wrong, right (strip)
    got = flips(preds, other, labels, Scoring())
    assert got == {"agreement": 0.6, "right_to_wrong": 1, "wrong_to_right": 1}
    assert flips(other, other, labels, Scoring())["agreement"] == 1.0
    with pytest.raises(ValueError):
        flips(preds[:2], other, labels, Scoring())


def test_hits_is_what_accuracy_and_agreement_average():
    loose = Scoring(strip=True, casefold=True)
    assert hits([" ab", "CD", "ef"], ["ab", "cd", "eg"], loose) == [True, True, False]
    assert hits([" ab", "CD"], ["ab", "cd"], Scoring(strip=False)) == [False, False]
    assert _score([" ab", "CD", "ef"], ["ab", "cd", "eg"], loose)["accuracy"] == round(2 / 3, 5)
    assert _agreement([" ab", "CD", "ef"], ["ab", "cd", "eg"], loose) == round(2 / 3, 5)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        hits(["a", "b"], ["a"], loose)


def test_accuracy_change_interval_brackets_the_change_and_shrinks_with_images():
    """low's unseen set on 2026-12-06: 26 answers lost, 17 won in 1000 images."""
    delta, lo, hi = accuracy_change_interval(26, 17, 1000)
    assert delta == pytest.approx(-0.9)
    assert lo < delta < hi and 2.0 < hi - lo < 3.0  # the set cannot resolve 0.5 points
    _, lo10, hi10 = accuracy_change_interval(260, 170, 10000)
    assert (hi10 - lo10) / (hi - lo) == pytest.approx(10**-0.5, rel=0.1)
    assert accuracy_change_interval(0, 0, 1000) == (0.0, 0.0, 0.0)


def test_accuracy_change_interval_covers_the_true_change_95_percent_of_the_time():
    """Paired answers drawn with a known change: the interval holds it in about 95 % of sets."""
    rng = np.random.default_rng(0)
    n, lose, win, covered, trials = 1000, 0.03, 0.02, 0, 2000
    for _ in range(trials):
        draws = rng.random(n)
        r2w, w2r = int((draws < lose).sum()), int(((draws >= lose) & (draws < lose + win)).sum())
        _, lo, hi = accuracy_change_interval(r2w, w2r, n)
        covered += lo <= 100 * (win - lose) <= hi
    assert 0.93 <= covered / trials <= 0.97
