"""Run a model on a CPU profile: inputs and outputs travel as .npz files to a worker process."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ProfileError
from .profile import Placement

WORKER = Path(__file__).with_name("worker.py")


def run_on(
    placement: Placement,
    model: Path,
    plan: dict,
    xs: list[np.ndarray],
    label: str,
    timeout_s: float | None = None,
) -> list[np.ndarray]:
    """`model`'s first output for every tensor in `xs`, computed by `placement`'s process."""
    if placement.how == "unavailable":
        raise ProfileError(f"{label}: cannot run here: {placement.reason}")
    with tempfile.TemporaryDirectory(prefix="ocr-profile-") as tmp:
        inputs, outputs, plan_file = Path(tmp, "in.npz"), Path(tmp, "out.npz"), Path(tmp, "p.json")
        np.savez(inputs, **{f"x{i}": x for i, x in enumerate(xs)})
        plan_file.write_text(json.dumps(plan))
        argv = [*placement.command, str(WORKER), str(model), str(plan_file), str(inputs)]
        env = {**os.environ, **dict(placement.env)}
        if placement.how == "emulated":
            env.pop("PYTHONHOME", None)  # the host's would be fatal to an arm64 interpreter
        done = subprocess.run(
            [*argv, str(outputs), label],
            env=env,
            stdout=subprocess.PIPE,
            stderr=None,  # progress lines reach the user as they come
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0 or not outputs.is_file():
            raise ProfileError(
                f"{label}: the worker ({' '.join(placement.command)}) exited with "
                f"{done.returncode}; rerun `make emulators` if the emulator set-up is broken"
            )
        with np.load(outputs) as data:
            return [data[f"y{i}"] for i in range(len(xs))]
