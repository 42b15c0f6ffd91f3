"""onnxruntime sessions built from recipe settings, with the provider fallback recorded."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .errors import FieldValueError

log = logging.getLogger(__name__)

OptLevel = Literal["disable", "basic", "extended", "all"]
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class Runtime:
    """Execution settings for a device class. Validated by pydantic inside recipes; carried by
    the bundle manifest, so an app runs the model exactly as the bench measured it."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    # tried in order; an unavailable provider is skipped and the skip is recorded
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    graph_optimization_level: OptLevel = "all"
    # spinning burns a core between runs; off for phones and shared boxes
    allow_spinning: bool = False
    # onnxruntime's CPU arena keeps freed blocks for reuse: faster, but resident memory only grows
    enable_cpu_mem_arena: bool = True
    # plans activation buffers from the first run's shapes; helps fixed shapes, not varying widths
    enable_mem_pattern: bool = True
    # .ort loads only: initializers point into the model bytes instead of being copied
    ort_bytes_for_initializers: bool = False
    # exact: on x86 CPUs without VNNI, onnxruntime's U8U8 int8 kernel instead of the U8S8 one,
    # whose 16-bit pair sums saturate (session.x64quantprecision); int8 results then equal
    # VNNI's integer arithmetic, so AVX2 and VNNI build machines decide the same. No effect on
    # VNNI, ARM or float models, nor on .ort files (the rewrite runs when an .onnx loads); ARM
    # requantizes static QDQ Conv its own way (the verify stage measures it). fast: the
    # saturating kernel (measured in the bench)
    int8_kernels: Literal["exact", "fast"] = "exact"

    def __post_init__(self) -> None:
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise FieldValueError("providers", "must name at least one execution provider")
        if self.graph_optimization_level not in _LEVELS:
            raise FieldValueError(
                "graph_optimization_level",
                f"must be one of {list(_LEVELS)}, got {self.graph_optimization_level!r}",
            )
        if not 1 <= self.intra_op_threads <= 256:
            raise FieldValueError(
                "intra_op_threads", f"must be in 1..256, got {self.intra_op_threads}"
            )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["providers"] = list(self.providers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Runtime:
        providers = data.get("providers", cls.providers)
        if isinstance(providers, str):  # one name, not a list of one-letter names
            providers = [providers]
        return cls(**{**data, "providers": tuple(providers)})


def session_plan(rt: Runtime, ort_format: bool = False) -> dict[str, Any]:
    """`rt` as onnxruntime SessionOptions attributes and config entries, plain data, so a
    process that imports only onnxruntime (a CPU profile's worker) builds the same session;
    `ort_format` adds the settings only .ort model bytes support."""
    config = {
        "session.intra_op.allow_spinning": "1" if rt.allow_spinning else "0",
        "session.x64quantprecision": "1" if rt.int8_kernels == "exact" else "0",
    }
    if ort_format and rt.ort_bytes_for_initializers:
        config["session.use_ort_model_bytes_directly"] = "1"
        config["session.use_ort_model_bytes_for_initializers"] = "1"
    return {
        "attributes": {
            "intra_op_num_threads": rt.intra_op_threads,
            "graph_optimization_level": _LEVELS[rt.graph_optimization_level].name,
            "execution_mode": "ORT_SEQUENTIAL",  # one run at a time: no inter-op pool
            "log_severity_level": 3,  # ddddocr's model declares a wrong output shape
            "enable_cpu_mem_arena": rt.enable_cpu_mem_arena,
            "enable_mem_pattern": rt.enable_mem_pattern,
        },
        "config": config,
    }


def options_from_plan(plan: dict[str, Any]) -> ort.SessionOptions:
    """SessionOptions from `session_plan`'s data (enum members given by name)."""
    so = ort.SessionOptions()
    enums = {
        "graph_optimization_level": ort.GraphOptimizationLevel,
        "execution_mode": ort.ExecutionMode,
    }
    for key, value in plan["attributes"].items():
        setattr(so, key, getattr(enums[key], value) if key in enums else value)
    for key, value in plan["config"].items():
        so.add_session_config_entry(key, value)
    return so


def session_options(rt: Runtime, ort_format: bool = False) -> ort.SessionOptions:
    """Options for `rt`; `ort_format` applies the settings only .ort model bytes support."""
    return options_from_plan(session_plan(rt, ort_format))


def choose_providers(wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(providers to use, providers skipped because this onnxruntime build lacks them)."""
    available = set(ort.get_available_providers())
    use = [p for p in wanted if p in available]
    skipped = [p for p in wanted if p not in available]
    for p in skipped:
        log.warning("execution provider %s is not available here; trying the next one", p)
    if not use:
        use = ["CPUExecutionProvider"]
    return use, skipped


def make_session(model: bytes | str, rt: Runtime, ort_format: bool = False) -> ort.InferenceSession:
    """A session for model bytes or a path, with the class's settings."""
    providers, _ = choose_providers(rt.providers)
    return ort.InferenceSession(model, session_options(rt, ort_format), providers=providers)


def quiet_cpu_session(model: bytes | str, threads: int = 1, level: OptLevel = "all"):
    """A plain CPU session at quiet log level, for the build's own checks and probes."""
    return make_session(model, Runtime(intra_op_threads=threads, graph_optimization_level=level))


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """The first output for one preprocessed input."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]
