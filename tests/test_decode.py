"""Greedy CTC decoding against hand-made paths and a naive Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ocr_bundles_runtime.decode import (
    Decoded,
    batch_size,
    decode,
    decode_batch,
    greedy_path,
    max_probs,
    to_time_major,
)

CHARSET = ["", "a", "b", "c"]
BLANK, A, B, C = 0, 1, 2, 3


def one_hot(path: list[int], classes: int = 4, high: float = 5.0) -> np.ndarray:
    """[T, C] logits whose argmax is `path`."""
    steps = np.zeros((len(path), classes), np.float32)
    steps[np.arange(len(path)), path] = high
    return steps


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row.astype(np.float64) - row.max())
    return e / e.sum()


def reference_decode(steps: np.ndarray, charset: list[str], blank: int) -> tuple[str, list[float]]:
    """The textbook loop: argmax per step, emit when not blank and not a repeat."""
    text, probs, prev = "", [], None
    for row in steps:
        values = row.tolist()
        k = max(range(len(values)), key=values.__getitem__)  # first maximum, like argmax
        if k != blank and k != prev:
            text += charset[k]
            probs.append(float(softmax(row)[k]))
        prev = k
    return text, probs


# ---------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ([A, A, BLANK, A, B, B], "aab"),  # repeats collapse; a blank separates equal chars
        ([BLANK, BLANK, BLANK], ""),
        ([A, B, C], "abc"),
        ([A, A, A, A], "a"),
        ([BLANK, A, BLANK, BLANK, A, BLANK], "aa"),
        ([C, BLANK, C, C, BLANK, C], "ccc"),
        ([A], "a"),
        ([], ""),
    ],
)
def test_greedy_collapses_repeats_then_drops_blanks(path, expected):
    steps = one_hot(path)
    assert decode(steps, CHARSET).text == expected
    idx, pos = greedy_path(steps)
    assert "".join(CHARSET[i] for i in idx) == expected
    assert all(path[p] == i for i, p in zip(idx, pos, strict=True))


def test_greedy_path_positions_are_first_steps_of_each_run():
    idx, pos = greedy_path(one_hot([A, A, BLANK, A, B, B]))
    assert idx.tolist() == [A, A, B]
    assert pos.tolist() == [0, 3, 4]


def test_non_zero_blank_index():
    charset = ["a", "b", ""]  # blank last
    steps = one_hot([0, 0, 2, 0, 1, 2, 2], classes=3)
    assert decode(steps, charset, blank=2).text == "aab"


def test_tbc_btc_and_2d_layouts_agree():
    steps = one_hot([A, BLANK, B, B, C])
    tbc = steps[:, None, :]
    btc = steps[None, :, :]
    assert tbc.shape == (5, 1, 4) and btc.shape == (1, 5, 4)
    assert decode(tbc, CHARSET, layout="TBC").text == "abc"
    assert decode(btc, CHARSET, layout="BTC").text == "abc"
    assert decode(steps, CHARSET, layout="TBC").text == "abc"
    np.testing.assert_array_equal(to_time_major(tbc, "TBC"), steps)
    np.testing.assert_array_equal(to_time_major(btc, "BTC"), steps)


def test_wrong_layout_reads_the_wrong_axis():
    # a [T, 1, C] output read as BTC gives one time step: the layout matters
    steps = one_hot([A, BLANK, B])[:, None, :]
    assert decode(steps, CHARSET, layout="BTC").text == "a"


# ---------------------------------------------------------------------------- probabilities


def test_without_probs_confidence_is_none():
    out = decode(one_hot([A, B]), CHARSET)
    assert out == Decoded("ab", None, None)


def test_confidence_is_the_weakest_emitted_char_probability():
    steps = np.array(
        [
            [0.0, 3.0, 0.0, 0.0],  # a, strong
            [0.0, 1.0, 0.0, 0.0],  # a repeat (weak, but not emitted)
            [4.0, 0.0, 0.0, 0.0],  # blank
            [0.0, 0.0, 1.5, 1.0],  # b, weakest emitted
            [0.0, 0.0, 0.0, 6.0],  # c
        ],
        np.float32,
    )
    out = decode(steps, CHARSET, with_probs=True)
    expected = [softmax(steps[0])[A], softmax(steps[3])[B], softmax(steps[4])[C]]
    assert out.text == "abc"
    assert out.char_probs == pytest.approx(expected, rel=1e-9)
    assert len(out.char_probs) == len(out.text)
    assert out.confidence == pytest.approx(min(expected), rel=1e-9)
    assert out.confidence == pytest.approx(softmax(steps[3])[B])


def test_empty_output_confidence_is_mean_blank_probability():
    steps = np.array([[2.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]], np.float32)
    out = decode(steps, CHARSET, with_probs=True)
    assert out.text == ""
    assert out.char_probs == []
    blank_p = [softmax(steps[0])[BLANK], softmax(steps[1])[BLANK]]
    assert out.confidence == pytest.approx(np.mean(blank_p), rel=1e-9)


def test_zero_steps_decode_to_empty_with_zero_confidence():
    out = decode(np.zeros((0, 1, 4), np.float32), CHARSET, with_probs=True)
    assert out == Decoded("", 0.0, [])


def test_max_probs_is_stable_for_huge_logits():
    steps = np.array([[1e4, 0, 0, 0], [0, -1e4, 1e4, 1e4]], np.float32)
    p = max_probs(steps)
    assert np.isfinite(p).all()
    assert p.tolist() == pytest.approx([1.0, 0.5])


def test_max_probs_matches_full_softmax():
    rng = np.random.default_rng(0)
    steps = rng.normal(0, 3, (20, 9)).astype(np.float32)
    expected = [softmax(row).max() for row in steps]
    np.testing.assert_allclose(max_probs(steps), expected, rtol=1e-12)


def test_probabilities_output_is_used_as_it_is():
    """A model ending in Softmax: no second softmax, the step probabilities are the output."""
    steps = np.array([[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.2, 0.1, 0.1, 0.6]], np.float32)
    out = decode(steps, CHARSET, with_probs=True, kind="probabilities")
    assert out.text == "ac"
    assert out.char_probs == pytest.approx([0.7, 0.6])
    assert out.confidence == pytest.approx(0.6)
    as_logits = decode(steps, CHARSET, with_probs=True, kind="logits")
    assert as_logits.text == "ac" and as_logits.confidence < 0.4  # softmax of probabilities
    empty = decode(steps[1:2], CHARSET, with_probs=True, kind="probabilities")
    assert empty == Decoded("", pytest.approx(0.6), [])


# ---------------------------------------------------------------------------- batches


def test_batch_items_are_decoded_separately_in_both_layouts():
    paths = [[A, BLANK, B], [C, C, BLANK], [BLANK, BLANK, A]]
    tbc = np.stack([one_hot(p) for p in paths], axis=1)  # [T, B, C]
    btc = np.stack([one_hot(p) for p in paths], axis=0)  # [B, T, C]
    assert batch_size(tbc, "TBC") == batch_size(btc, "BTC") == 3
    assert batch_size(tbc[:, 0], "TBC") == 1  # a 2-D [T, C] output is one item
    for out, layout in ((tbc, "TBC"), (btc, "BTC")):
        assert [decode(out, CHARSET, layout, item=i).text for i in range(3)] == ["ab", "c", "a"]
        batch = decode_batch(out, CHARSET, layout, BLANK, "logits")
        assert [d.text for d in batch] == ["ab", "c", "a"]
        assert all(d.confidence is not None and len(d.char_probs) == len(d.text) for d in batch)
        texts_only = decode_batch(out, CHARSET, layout, BLANK, "logits", with_probs=False)
        assert texts_only == [Decoded("ab"), Decoded("c"), Decoded("a")]
        np.testing.assert_array_equal(to_time_major(out, layout, 2), one_hot(paths[2]))


# ---------------------------------------------------------------------------- reference


def test_matches_naive_reference_on_random_logits():
    rng = np.random.default_rng(20261125)
    for case in range(200):
        classes = int(rng.integers(2, 12))
        steps_n = int(rng.integers(0, 40))
        blank = int(rng.integers(0, classes)) if case % 3 == 0 else 0
        charset = [chr(ord("A") + i) for i in range(classes)]
        charset[blank] = ""
        # small integers give many repeats and ties (argmax keeps the first maximum)
        if case % 2:
            steps = rng.integers(-2, 3, (steps_n, classes)).astype(np.float32)
        else:
            steps = rng.normal(0, 2, (steps_n, classes)).astype(np.float32)
        layout = "TBC" if case % 4 < 2 else "BTC"
        logits = steps[:, None, :] if layout == "TBC" else steps[None, :, :]
        text, probs = reference_decode(steps, charset, blank)
        out = decode(logits, charset, layout=layout, blank=blank, with_probs=True)
        assert out.text == text, f"case {case}"
        assert decode(logits, charset, layout=layout, blank=blank).text == text
        assert out.char_probs == pytest.approx(probs, rel=1e-6), f"case {case}"
        if probs:
            assert out.confidence == pytest.approx(min(probs), rel=1e-6)
        else:
            assert 0.0 <= out.confidence <= 1.0
            assert not math.isnan(out.confidence)
