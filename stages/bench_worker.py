"""The measured child process of the bench: `python -m stages.bench_worker '<json spec>'`.

Its peak RSS and cold start ARE the measurement, so it imports only what the measured variant
needs, lazily: the standard library here, then onnxruntime + stages.preprocess/decode (numpy,
Pillow, OpenCV only for an OpenCV recipe) for an ONNX variant, ddddocr for a stock one, or
stages.runtime for the bundle. No pydantic, no onnx.

Spec keys: variant, kind ("onnx" | "stock" | "bundle"), cores (CPU ids to pin to), images
(paths; the first one is the cold-start image), warm_images, warmup, and per kind: model,
preprocess, runtime (onnx); stock ("beta" | "default"); bundle (folder).

Stdout gets two JSON lines: {"event": "first", ...} right after the first recognized text (the
parent timestamps its arrival: that is the cold start), then {"event": "done", ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .preprocess_probe import peak_rss_kb

KINDS = ("onnx", "stock", "bundle")
# heavy modules worth knowing whether a variant pulled in (they dominate RSS and cold start)
NOTABLE = ("onnxruntime", "numpy", "PIL", "cv2", "onnx", "pydantic", "ddddocr")


class TimedSession:
    """Stands in for an onnxruntime session and adds every `run` time to `sink[0]` (seconds).

    Used where the session belongs to ddddocr's code, so its model-only time is measured at
    the same call site as for our own sessions."""

    def __init__(self, session: Any, sink: list[float]) -> None:
        self._session = session
        self._sink = sink

    def run(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self._session.run(*args, **kwargs)
        self._sink[0] += time.perf_counter() - t0
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class Runner(ABC):
    """One recognizer under test; `model_s[0]` accumulates model-only seconds of a call."""

    model_timing: str | None = None  # why model time cannot be measured, when it cannot
    ort_threads: int | None = None  # the intra-op threads its onnxruntime session runs with

    def __init__(self) -> None:
        self.model_s = [0.0]

    @abstractmethod
    def recognize(self, data: bytes) -> str:
        """Image file bytes -> recognized text."""


class OnnxRunner(Runner):
    """Our pipeline: bytes -> stages.preprocess -> onnxruntime -> stages.decode."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        from stages.decode import decode
        from stages.inference import Runtime, make_session
        from stages.preprocess import Preprocess, preprocess

        rt = dict(spec["runtime"])
        rt["providers"] = tuple(rt.get("providers", ("CPUExecutionProvider",)))
        self.pre = Preprocess(**spec["preprocess"])
        self.session = make_session(str(spec["model"]), Runtime(**rt))
        self.ort_threads = int(rt.get("intra_op_threads", 1))
        # the CTC contract travels in the model's metadata; ORT reads it without onnx
        meta = self.session.get_modelmeta().custom_metadata_map
        self.charset = json.loads(meta["ocr.charset"])
        self.layout, self.blank = meta["ocr.layout"], int(meta["ocr.blank"])
        self.input = self.session.get_inputs()[0].name
        self.decode, self.preprocess = decode, preprocess

    def recognize(self, data: bytes) -> str:
        x = self.preprocess(data, self.pre)
        t0 = time.perf_counter()
        logits = self.session.run(None, {self.input: x})[0]
        self.model_s[0] += time.perf_counter() - t0
        return self.decode(logits, self.charset, self.layout, self.blank).text


class StockRunner(Runner):
    """Stock ddddocr 1.6 as users call it: `DdddOcr(...).classification(png_bytes)`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.ort_threads = device_sized_default_sessions(len(spec["cores"]))
        import ddddocr

        self.ocr = ddddocr.DdddOcr(beta=spec["stock"] == "beta", show_ad=False)
        engine = self.ocr.ocr_engine
        # OCREngine._inference calls self.session.run: time exactly that call
        engine.session = TimedSession(engine.session, self.model_s)

    def recognize(self, data: bytes) -> str:
        return str(self.ocr.classification(data))


def device_sized_default_sessions(cores: int) -> int:
    """Make sessions created without options (ddddocr's) get `cores` intra-op threads.

    ddddocr passes no SessionOptions, so onnxruntime sizes its pool to the machine's physical
    cores and pins each pool thread to one of them, escaping our process affinity. On a device
    with `cores` cores onnxruntime's default would be `cores` threads: give stock exactly that,
    and nothing else differs from its defaults."""
    import onnxruntime as ort

    class DeviceSizedSession(ort.InferenceSession):
        def __init__(self, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kw: Any):
            if sess_options is None:
                sess_options = ort.SessionOptions()
                sess_options.intra_op_num_threads = cores
            super().__init__(path_or_bytes, sess_options, *args, **kw)

    ort.InferenceSession = DeviceSizedSession  # type: ignore[misc]
    return cores


class BundleRunner(Runner):
    """The deployable recognizer: `stages.runtime.Recognizer.from_bundle(folder).predict`.

    Its sessions live inside the runtime's own records, so model-only time is the runtime's
    own `Result.timings_ms["infer"]` (session.run of every model the call used)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        from stages.runtime import Recognizer

        self.recognizer = Recognizer.from_bundle(spec["bundle"])
        runtime = getattr(getattr(self.recognizer, "spec", None), "runtime", None)
        self.ort_threads = getattr(runtime, "intra_op_threads", None)

    def recognize(self, data: bytes) -> str:
        result = self.recognizer.predict(data)
        infer_ms = getattr(result, "timings_ms", {}).get("infer")
        if infer_ms is None:
            self.model_timing = "the runtime's Result carries no timings_ms['infer']"
        else:
            self.model_s[0] += infer_ms / 1e3
        return str(result.text)


RUNNERS: dict[str, Callable[[dict[str, Any]], Runner]] = {
    "onnx": OnnxRunner,
    "stock": StockRunner,
    "bundle": BundleRunner,
}


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def timed_calls(runner: Runner, images: list[bytes]) -> tuple[list[str], list[float], list[float]]:
    """Texts, end-to-end ms and model-only ms of one call per image."""
    texts, total_ms, model_ms = [], [], []
    for data in images:
        runner.model_s[0] = 0.0
        t0 = time.perf_counter()
        texts.append(runner.recognize(data))
        total_ms.append((time.perf_counter() - t0) * 1e3)
        model_ms.append(runner.model_s[0] * 1e3)
    return texts, total_ms, model_ms


def confine_threads(cores: list[int]) -> int:
    """Pin every thread of this process to `cores`; returns how many had left them (a library
    that pins its own threads, or one started before the process affinity was set)."""
    escaped = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getaffinity(int(tid)) - set(cores):
                os.sched_setaffinity(int(tid), cores)
                escaped += 1
        except ProcessLookupError:
            continue  # the thread ended between listing and pinning: nothing left to pin
    return escaped


def thread_affinity() -> list[int]:
    """Every CPU any thread of this process may run on."""
    cpus: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except ProcessLookupError:
            continue  # the thread ended between listing and reading
    return sorted(cpus)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, recognize the first image (cold), warm up, then time `warm_images` calls."""
    runner = RUNNERS[spec["kind"]](spec)
    escaped = confine_threads(spec["cores"])  # thread pools exist once the session does
    paths = [Path(p) for p in spec["images"]]
    first = runner.recognize(paths[0].read_bytes())
    emit({"event": "first", "text": first})
    escaped += confine_threads(spec["cores"])  # and any started lazily on the first call
    pool = [p.read_bytes() for p in paths]
    for i in range(spec["warmup"]):
        runner.recognize(pool[i % len(pool)])
    timed = [pool[i % len(pool)] for i in range(spec["warm_images"])]
    texts, total_ms, model_ms = timed_calls(runner, timed)
    return {
        "event": "done",
        "variant": spec["variant"],
        "texts": texts,
        "total_ms": [round(t, 4) for t in total_ms],
        "model_ms": None if runner.model_timing else [round(t, 4) for t in model_ms],
        "model_timing": runner.model_timing,
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
        "peak_rss_mb": peak_rss_kb() / 1024,
        "affinity": sorted(os.sched_getaffinity(0)),
        "thread_affinity": thread_affinity(),
        "escaped_threads": escaped,
        "ort_threads": runner.ort_threads,
        "os_threads": len(os.listdir("/proc/self/task")),
        "imported": [m for m in NOTABLE if m in sys.modules],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m stages.bench_worker '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    if spec.get("kind") not in KINDS:
        print(
            f"bench_worker: kind must be one of {KINDS}, got {spec.get('kind')!r}", file=sys.stderr
        )
        return 2
    # Pin before importing onnxruntime or ddddocr, so every thread they start inherits it;
    # `confine_threads` then catches the threads that pin themselves elsewhere.
    os.sched_setaffinity(0, spec["cores"])
    emit(measure(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
