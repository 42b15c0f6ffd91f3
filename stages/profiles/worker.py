"""Run one model on saved input tensors and save its outputs: the process a CPU profile runs
(natively, or under QEMU with an emulated CPU's own onnxruntime wheel).

    python worker.py MODEL PLAN.json INPUTS.npz OUTPUTS.npz LABEL

Imports numpy and onnxruntime only (an emulated arm64 Python has nothing else), and builds its
session from `ocr_bundles_runtime.session.session_plan`'s data, so it runs the model exactly as the
runtime would. Run as a script, never imported by the pipeline.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort

_ENUMS = {
    "graph_optimization_level": ort.GraphOptimizationLevel,
    "execution_mode": ort.ExecutionMode,
}


def options(plan: dict) -> ort.SessionOptions:
    """ocr_bundles_runtime.session.options_from_plan, which this process cannot import (the runtime
    package imports Pillow); tests check both give the same outputs."""
    so = ort.SessionOptions()
    for key, value in plan["attributes"].items():
        setattr(so, key, getattr(_ENUMS[key], value) if key in _ENUMS else value)
    for key, value in plan["config"].items():
        so.add_session_config_entry(key, value)
    return so


def main(argv: list[str]) -> int:
    model, plan_file, inputs, outputs, label = argv
    with open(plan_file) as f:
        plan = json.load(f)
    session = ort.InferenceSession(model, options(plan), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with np.load(inputs) as data:
        xs = [data[f"x{i}"] for i in range(len(data.files))]
    out, last = {}, time.monotonic()
    for i, x in enumerate(xs):
        out[f"y{i}"] = session.run(None, {name: x})[0]
        if time.monotonic() - last >= 10.0:
            last = time.monotonic()
            print(f"{label}: {i + 1}/{len(xs)}", file=sys.stderr, flush=True)
    np.savez(outputs, **out)
    print(f"{label}: {len(xs)}/{len(xs)} done", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
