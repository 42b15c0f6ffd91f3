"""The measured child process of the bench: `python -m stages.measure.worker '<json spec>'`.

Its peak RSS and cold start ARE the measurement, so it imports only what the measured variant
needs, lazily: the standard library here, then onnxruntime + ocr_bundles_runtime (numpy, Pillow,
OpenCV only for an OpenCV recipe) for an ONNX or bundle variant, or ddddocr for a stock one.
No pydantic, no onnx.

Spec keys: variant, kind ("onnx" | "stock" | "bundle"), cores (CPU ids to pin to), images
(paths; the first one is the cold-start image), warm_images, warmup, long_session (calls after
warm-up for the memory-growth run; 0 = a timing run), and per kind:
  onnx:   model (.onnx or .ort path), preprocess, runtime
  stock:  stock ("beta" | "old"), or model + charsets (a ddddocr custom-model load)
  bundle: bundle (folder), model_format, load_fallback (load it before the first image)

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

KINDS = ("onnx", "stock", "bundle")
# heavy modules worth knowing whether a variant pulled in (they dominate RSS and cold start)
NOTABLE = ("onnxruntime", "numpy", "PIL", "cv2", "onnx", "pydantic", "ddddocr")
BACKEND_MODULE = {"pillow": "PIL.Image", "numpy": "PIL.Image", "opencv": "cv2"}


def status_kb(key: str) -> int:
    """A /proc/self/status figure in kB: VmHWM (peak RSS; ru_maxrss would carry the parent's
    peak across exec) or VmRSS (resident now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


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

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.model_s = [0.0]

    @abstractmethod
    def import_libs(self) -> None:
        """Import what the variant's app imports (timed as the cold start's import part)."""

    @abstractmethod
    def load(self) -> None:
        """Build the recognizer: sessions, charset (timed as the session part)."""

    @abstractmethod
    def recognize(self, data: bytes) -> str:
        """Image file bytes -> recognized text."""

    def fallback_loaded(self) -> bool | None:
        return None


class OnnxRunner(Runner):
    """Our pipeline: bytes -> ocr_bundles_runtime preprocess -> onnxruntime -> decode."""

    def import_libs(self) -> None:
        import onnxruntime  # noqa: F401

        from ocr_bundles_runtime import decode, preprocess, session  # noqa: F401

        __import__(BACKEND_MODULE[self.spec["preprocess"]["backend"]])

    def load(self) -> None:
        from ocr_bundles_runtime.decode import decode
        from ocr_bundles_runtime.preprocess import Preprocess, model_input
        from ocr_bundles_runtime.session import Runtime, make_session

        rt = Runtime.from_dict(self.spec["runtime"])
        path = Path(self.spec["model"])
        self.pre = Preprocess(**self.spec["preprocess"])
        ort_format = path.suffix == ".ort"
        # initializers inside the .ort bytes: onnxruntime must own the buffer, so it reads the
        # file itself (from Python bytes it would point into a freed copy and crash)
        source = str(path) if ort_format and rt.ort_bytes_for_initializers else path.read_bytes()
        self.session = make_session(source, rt, ort_format=ort_format)
        self.ort_threads = rt.intra_op_threads
        # the CTC contract travels in the model's metadata; ORT reads it without onnx
        meta = self.session.get_modelmeta().custom_metadata_map
        self.charset = json.loads(meta["ocr.charset"])
        self.layout, self.blank = meta["ocr.layout"], int(meta["ocr.blank"])
        self.input = self.session.get_inputs()[0].name
        # a pixel-feed bundle's model (bundle.preprocess: graph) takes decoded uint8 pixels
        pixels = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.feed = "pixels" if pixels else "tensor"
        self.decode, self.model_input = decode, model_input

    def recognize(self, data: bytes) -> str:
        x = self.model_input(data, self.pre, self.feed)
        t0 = time.perf_counter()
        out = self.session.run(None, {self.input: x})[0]
        self.model_s[0] += time.perf_counter() - t0
        return self.decode(out, self.charset, self.layout, self.blank).text


class StockRunner(Runner):
    """Stock ddddocr as users call it: `DdddOcr(...).classification(png_bytes)`; with `model`
    in the spec, ddddocr's custom-model load of it (its runtime floor)."""

    def import_libs(self) -> None:
        import ddddocr  # noqa: F401 - its imports (onnxruntime, OpenCV, Pillow) are stock's

    def load(self) -> None:
        self.ort_threads = device_sized_default_sessions(len(self.spec["cores"]))
        import ddddocr

        if "model" in self.spec:
            self.ocr = ddddocr.DdddOcr(
                show_ad=False,
                import_onnx_path=self.spec["model"],
                charsets_path=self.spec["charsets"],
            )
        else:
            self.ocr = ddddocr.DdddOcr(beta=self.spec["stock"] == "beta", show_ad=False)
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
    """The deployable recognizer: `ocr_bundles_runtime.Recognizer.from_bundle(folder).predict`.

    Its sessions live inside the runtime's own records, so model-only time is the runtime's
    own `Result.timings_ms["infer"]` (session.run of every model the call used)."""

    def import_libs(self) -> None:
        import ocr_bundles_runtime  # noqa: F401 - onnxruntime, numpy and the runtime itself

        manifest = json.loads((Path(self.spec["bundle"]) / "manifest.json").read_text())
        __import__(BACKEND_MODULE[manifest["preprocess"]["backend"]])

    def load(self) -> None:
        from ocr_bundles_runtime import Recognizer

        self.recognizer = Recognizer.from_bundle(
            self.spec["bundle"], model_format=self.spec.get("model_format")
        )
        if self.spec.get("load_fallback"):
            self.recognizer.load_fallback()
        self.ort_threads = self.recognizer.spec.runtime.intra_op_threads

    def recognize(self, data: bytes) -> str:
        result = self.recognizer.predict(data)
        self.model_s[0] += result.timings_ms["infer"] / 1e3
        return result.text

    def fallback_loaded(self) -> bool | None:
        return self.recognizer.fallback_loaded


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
    """Import, load, recognize the first image (cold), warm up, then either time
    `warm_images` calls or, for a long-session run, make `long_session` calls."""
    runner = RUNNERS[spec["kind"]](spec)
    t0 = time.perf_counter()
    runner.import_libs()
    t1 = time.perf_counter()
    runner.load()
    t2 = time.perf_counter()
    escaped = confine_threads(spec["cores"])  # thread pools exist once the session does
    paths = [Path(p) for p in spec["images"]]
    first = runner.recognize(paths[0].read_bytes())
    t3 = time.perf_counter()
    emit({"event": "first", "text": first})
    escaped += confine_threads(spec["cores"])  # and any started lazily on the first call
    pool = [p.read_bytes() for p in paths]
    for i in range(spec["warmup"]):
        runner.recognize(pool[i % len(pool)])
    out: dict[str, Any] = {
        "event": "done",
        "variant": spec["variant"],
        "import_ms": round((t1 - t0) * 1e3, 2),
        "session_ms": round((t2 - t1) * 1e3, 2),
        "first_ms": round((t3 - t2) * 1e3, 2),
    }
    n = spec["long_session"] or spec["warm_images"]
    calls = [pool[i % len(pool)] for i in range(n)]
    # a long session reads RSS halfway too: a leak grows in the second half as in the first,
    # a one-time allocation (the allocator's next block, a lazily loaded fallback) does not
    half = len(calls) // 2 if spec["long_session"] else len(calls)
    rss_warm = status_kb("VmRSS")
    cpu0 = time.process_time()  # user + sys of every thread of this process
    first = timed_calls(runner, calls[:half])
    rss_half = status_kb("VmRSS")
    rest = timed_calls(runner, calls[half:])
    texts, total_ms, model_ms = (a + b for a, b in zip(first, rest, strict=True))
    out["cpu_s"] = time.process_time() - cpu0
    if spec["long_session"]:
        out["rss_warm_mb"] = rss_warm / 1024
        out["rss_half_mb"] = rss_half / 1024
        out["rss_end_mb"] = status_kb("VmRSS") / 1024
    return {
        **out,
        "texts": texts[: spec["warm_images"]],
        "total_ms": [round(t, 4) for t in total_ms],
        "model_ms": None if runner.model_timing else [round(t, 4) for t in model_ms],
        "model_timing": runner.model_timing,
        "peak_rss_mb": status_kb("VmHWM") / 1024,
        "affinity": sorted(os.sched_getaffinity(0)),
        "thread_affinity": thread_affinity(),
        "escaped_threads": escaped,
        "ort_threads": runner.ort_threads,
        "os_threads": len(os.listdir("/proc/self/task")),
        "fallback_loaded": runner.fallback_loaded(),
        "imported": [m for m in NOTABLE if m in sys.modules],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m stages.measure.worker '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    if spec.get("kind") not in KINDS:
        print(f"worker: kind must be one of {KINDS}, got {spec.get('kind')!r}", file=sys.stderr)
        return 2
    # Pin before importing onnxruntime or ddddocr, so every thread they start inherits it;
    # `confine_threads` then catches the threads that pin themselves elsewhere.
    os.sched_setaffinity(0, spec["cores"])
    emit(measure(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
