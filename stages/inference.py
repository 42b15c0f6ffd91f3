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
    """Execution settings for a device class. Validated by pydantic inside recipes."""

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic, no import here

    # tried in order; an unavailable provider is skipped and the skip is recorded
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization_level: OptLevel = "all"
    # spinning burns a core between runs; off for phones and shared boxes
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        if not self.providers:
            raise FieldValueError("providers", "must name at least one execution provider")
        if not 1 <= self.intra_op_threads <= 256:
            raise FieldValueError(
                "intra_op_threads", f"must be in 1..256, got {self.intra_op_threads}"
            )
        if not 1 <= self.inter_op_threads <= 256:
            raise FieldValueError(
                "inter_op_threads", f"must be in 1..256, got {self.inter_op_threads}"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def session_options(rt: Runtime) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = rt.intra_op_threads
    so.inter_op_num_threads = rt.inter_op_threads
    so.graph_optimization_level = _LEVELS[rt.graph_optimization_level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # ddddocr's model declares a wrong output shape; ORT warns per run
    spin = "1" if rt.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


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


def make_session(model: bytes | str, rt: Runtime) -> ort.InferenceSession:
    providers, _ = choose_providers(rt.providers)
    return ort.InferenceSession(model, session_options(rt), providers=providers)


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits of the first output for one preprocessed image."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]
