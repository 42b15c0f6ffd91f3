"""How fragile a float model's texts are: small, seeded changes of its weights.

Agreement with the float model is the gate of a lossy class, but on a set the model reads
only half right, many of its answers sit next to another one, and any change of the numbers
flips some. These rewrites change every float initializer of the model by a known, small
amount and nothing else, so that the texts they flip measure that fragility per set: a scale
for a quantizer's agreement there, since what it flips depends on how far it moves the outputs.

- fp16_rounded: every weight rounded to float16 and back (relative change <= 2^-11), the
  precision a half-float bundle would keep;
- weight_noise(relative, seed): every weight times (1 + relative * z), z standard normal from
  numpy's seeded generator: a random change of `relative` of each weight's size. For scale,
  int8 with one scale per output channel moves a weight by up to half a step, 1/254 of its
  channel's largest |weight|, which is 0.4 % of that weight and more of smaller ones.

Neither is a model to ship, and nothing is timed. Only float32 initializers change; integer
ones (shapes, indices) are kept. The results are the same bytes on every machine: numpy's
generator and IEEE rounding do not depend on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from . import modelio


def fp16_rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every float32 initializer rounded to float16 and back to float32."""
    return _mapped(model, lambda a, _: a.astype(np.float16).astype(np.float32))


def weight_noise(model: onnx.ModelProto, relative: float, seed: int) -> onnx.ModelProto:
    """`model` with every float32 initializer times (1 + relative * z), z ~ N(0, 1) drawn per
    element from numpy.random.default_rng([seed, initializer index])."""
    if not 0 < relative < 1:
        raise ValueError(f"weight noise {relative}: give a relative size between 0 and 1")

    def noisy(a: np.ndarray, index: int) -> np.ndarray:
        z = np.random.default_rng([seed, index]).standard_normal(a.shape)
        return (a.astype(np.float64) * (1.0 + relative * z)).astype(np.float32)

    return _mapped(model, noisy)


def _mapped(
    model: onnx.ModelProto, change: Callable[[np.ndarray, int], np.ndarray]
) -> onnx.ModelProto:
    """A copy of `model` whose float32 initializers are change(array, index)."""
    out = modelio.copy(model)
    for i, t in enumerate(out.graph.initializer):
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(change(a, i), t.name))
    return out
