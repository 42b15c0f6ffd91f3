"""stages/perturb.py: the float model with its weights slightly changed, and nothing else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tiny
from onnx import numpy_helper

from stages.perturb import fp16_rounded, weight_noise


def floats(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    }


def others(model: onnx.ModelProto) -> dict[str, bytes]:
    return {
        t.name: t.SerializeToString()
        for t in model.graph.initializer
        if t.data_type != onnx.TensorProto.FLOAT
    }


def test_fp16_rounding_moves_each_weight_by_at_most_half_a_float16_step():
    model = tiny.tiny_ctc()
    before, after = floats(model), floats(fp16_rounded(model))
    assert before.keys() == after.keys() and others(fp16_rounded(model)) == others(model)
    moved = 0
    for name, a in before.items():
        b = after[name]
        assert b.dtype == np.float32 and b.shape == a.shape
        # float16 keeps 11 significant bits: relative error <= 2^-11 (normal range)
        normal = np.abs(a) > 1e-4
        assert np.all(np.abs(b - a)[normal] <= np.abs(a)[normal] * 2.0**-11 * 1.0001)
        moved += int(np.count_nonzero(b != a))
    assert moved > 0  # the tiny model's weights are not all float16 already
    assert fp16_rounded(fp16_rounded(model)) == fp16_rounded(model)  # rounding is idempotent


def test_weight_noise_has_the_stated_relative_size_and_follows_its_seed():
    model = tiny.tiny_ctc()
    before = floats(model)
    after = floats(weight_noise(model, 0.01, seed=3))
    ratios = np.concatenate(
        [(after[n][before[n] != 0] / before[n][before[n] != 0]).ravel() - 1.0 for n in before]
    )
    assert ratios.size > 900  # the tiny model has 995 non-zero weights
    assert abs(float(ratios.std()) - 0.01) < 0.001 and abs(float(ratios.mean())) < 0.001
    assert others(weight_noise(model, 0.01, seed=3)) == others(model)
    # the same seed gives the same bytes; another seed other ones
    assert weight_noise(model, 0.01, 3) == weight_noise(model, 0.01, 3)
    assert weight_noise(model, 0.01, 4) != weight_noise(model, 0.01, 3)
    # and the model it was given is left as it was
    assert all(np.array_equal(a, floats(model)[n]) for n, a in before.items())


def test_weight_noise_moves_the_outputs_in_proportion_to_its_size():
    model = tiny.tiny_ctc()
    xs = tiny.inputs(4, seed=5)
    ref = np.concatenate([tiny.run(model, x).ravel() for x in xs])

    def moved(relative: float) -> float:
        out = np.concatenate([tiny.run(weight_noise(model, relative, 0), x).ravel() for x in xs])
        return float(np.sqrt(np.mean((out - ref) ** 2)))

    small, large = moved(0.001), moved(0.01)
    assert 0 < small < large and 5 < large / small < 20  # about 10x: linear for small noise


@pytest.mark.parametrize("relative", [0.0, 1.0, -0.1])
def test_a_noise_size_outside_zero_to_one_is_refused(relative: float):
    with pytest.raises(ValueError, match="between 0 and 1"):
        weight_noise(tiny.tiny_ctc(), relative, 0)
