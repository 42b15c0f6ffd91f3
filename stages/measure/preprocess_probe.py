"""Child process of the preprocess stage: pin one core, then measure one candidate.

Run as `python -m stages.measure.preprocess_probe '<json>'`; it imports nothing heavy before
pinning, so BLAS and OpenCV thread pools see one core, and the backend's import cost is its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .worker import status_kb

BACKEND_IMPORTS = {"pillow": "PIL.Image", "opencv": "cv2", "numpy": "PIL.Image"}


def main(job: dict) -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np
    import onnxruntime  # noqa: F401 - part of every deployment's baseline

    from ocr_bundles_runtime.preprocess import Preprocess, preprocess

    base = status_kb("VmHWM")
    t0 = time.perf_counter()
    __import__(BACKEND_IMPORTS[job["spec"]["backend"]])
    import_ms = (time.perf_counter() - t0) * 1e3
    import_kb = status_kb("VmHWM") - base
    spec = Preprocess(**job["spec"])
    blobs = [Path(p).read_bytes() for p in job["images"]]
    for b in blobs[:5]:  # lazy imports and caches
        preprocess(b, spec)
    times = []
    for b in blobs:
        t = time.perf_counter()
        preprocess(b, spec)
        times.append(time.perf_counter() - t)
    return {
        "preprocess_ms": round(float(np.median(times)) * 1e3, 3),
        "import_rss_mb": round(import_kb / 1024, 1),
        "import_ms": round(import_ms, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
