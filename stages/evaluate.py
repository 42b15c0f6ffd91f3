"""The evaluation stage: every model of a build on every evaluation set (one per data source),
one shared preprocessing and one CTC decode, scored against labels and against the reference.

Deterministic: no timings here (the bench measures speed), so an unchanged rebuild writes the
same eval.json and nothing downstream reruns.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx

from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.preprocess import Preprocess, preprocess_all
from ocr_bundles_runtime.session import Runtime, make_session

from . import modelio
from .errors import DataError
from .progress import Progress, map_ordered, usable_cores
from .records import (
    BUILD_FILE,
    BuildRecord,
    Change,
    EvalRecord,
    ReferenceTexts,
    SetScore,
    VariantEval,
    read_record,
)
from .scoring import Scoring, agreement, flips, score

EVAL_WORKERS_MAX = 8  # threads calling one session; texts do not depend on how many


def eval_runtime(runtime: Runtime) -> Runtime:
    """The class's session settings with one intra-op thread: every usable core runs its own
    call instead (map_ordered), and the texts do not depend on the machine's core count."""
    return dataclasses.replace(runtime, intra_op_threads=1, allow_spinning=False)


def predict(
    model_path: Path, xs: list[np.ndarray], rt: Runtime, bar: Progress | None = None
) -> list[str]:
    """The model's text for each input tensor, decoded with the model's own CTC contract."""
    sess = make_session(model_path.read_bytes(), rt)
    name = sess.get_inputs()[0].name
    meta = sess.get_modelmeta().custom_metadata_map
    ctc = modelio.spec_from_metadata(meta, name, sess.get_outputs()[0].name)

    def text(x: np.ndarray) -> str:
        return decode(sess.run(None, {name: x})[0], ctc.charset, ctc.layout, ctc.blank).text

    return map_ordered(text, xs, bar, min(usable_cores(), EVAL_WORKERS_MAX))


def score_sets(
    preds: dict[str, list[str]],
    labels: dict[str, list[str]],
    ref: dict[str, list[str]] | None,
    scoring: Scoring,
    against: tuple[str, dict[str, list[str]]] | None = None,
) -> dict[str, SetScore]:
    """Per set: accuracy against the labels, agreement with `ref`, and with `against` (a
    variant's name and texts) what changed both ways."""
    return {
        s: SetScore(
            **score(preds[s], labels[s], scoring),
            agreement=agreement(preds[s], ref[s], scoring) if ref is not None else None,
            change=None if against is None else Change(
                against=against[0], **flips(preds[s], against[1][s], labels[s], scoring)
            ),
        )
        for s in preds
    }  # fmt: skip


class EvalSets:
    """Every evaluation set's images and labels, and their tensors per preprocessing."""

    def __init__(self, sets: dict[str, list[tuple[Path, str]]]) -> None:
        self.images = {s: [p for p, _ in items] for s, items in sets.items()}
        self.labels = {s: [t for _, t in items] for s, items in sets.items()}
        self._tensors: dict[Preprocess, dict[str, list[np.ndarray]]] = {}

    def tensors(self, spec: Preprocess) -> dict[str, list[np.ndarray]]:
        if spec not in self._tensors:
            self._tensors[spec] = {s: preprocess_all(p, spec) for s, p in self.images.items()}
        return self._tensors[spec]

    @property
    def names(self) -> dict[str, list[str]]:
        """Image file names per set: what a record of texts read on these sets is keyed by."""
        return {s: [p.name for p in paths] for s, paths in self.images.items()}

    @property
    def sizes(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.labels.items()}

    def predict(self, model: Path, spec: Preprocess, rt: Runtime, label: str) -> dict:
        bar = Progress(label, sum(self.sizes.values()))
        preds = {s: predict(model, xs, rt, bar) for s, xs in self.tensors(spec).items()}
        bar.close()
        return preds


def reference_texts(path: Path, sets: EvalSets, spec: Preprocess) -> dict[str, list[str]]:
    """The reference's texts the baselines stage read on these very images with this very
    preprocessing; anything else is stale and refused, never silently mixed."""
    ref = read_record(path, ReferenceTexts)
    same_spec = ref.preprocess == json.loads(json.dumps(spec.as_dict()))  # as written
    if ref.images != sets.names or not same_spec:
        raise DataError(
            f"{path}: reference texts were read on other evaluation images or with another "
            "preprocessing than this run's; rerun the baselines stage (dvc repro baselines)"
        )
    return ref.texts


def evaluate_build(
    target: str,
    source: Path,
    build: Path,
    sets: EvalSets,
    preprocess: Preprocess,
    reference: Preprocess,
    scoring: Scoring,
    runtime: Runtime,
    reference_preds: dict[str, list[str]] | None = None,
    exact_check: int = 0,
) -> EvalRecord:
    """Reference (source model, the contract's preprocessing; its texts are read here unless
    given), every stage model and the final one (the recipe's preprocessing and session
    settings), all on the same evaluation images. A stage of an exact pass reads only the first
    `exact_check` images of each set when that settles it (`_exact_stage`)."""
    rt = eval_runtime(runtime)
    ref_preds = reference_preds
    if ref_preds is None:
        ref_preds = sets.predict(
            source / "model.onnx", reference, rt, f"evaluate@{target} reference"
        )
    variants = {
        "reference": VariantEval(
            file=None,
            size_mb=round(modelio.size_mb(source / "model.onnx"), 3),
            sets=score_sets(ref_preds, sets.labels, None, scoring),
        )
    }
    record = read_record(build / BUILD_FILE, BuildRecord)
    before = ("reference", ref_preds)  # each stage's input: the previous stage's texts
    float_model = None  # the input of the first lossy pass: what the class quantizes
    previous = None  # the previous stage's bytes: a pass that changed nothing reads the same
    classes = _classes(modelio.load(source / "model.onnx"))
    for st in record.stages:
        label = f"evaluate@{target} {st.stem}"
        data = (build / st.file).read_bytes()
        reused: tuple[str, int] | None = None
        if data == previous:
            print(f"{label}: the previous stage's bytes, its texts", flush=True)
        else:
            same, classes = _same_classes(data, classes)
            takes = st.exact and same and (before[0] != "reference" or preprocess == reference)
            if takes and exact_check:
                preds, reused = _exact_stage(
                    build / st.file, sets, preprocess, rt, before, exact_check, label
                )
            else:
                preds = sets.predict(build / st.file, preprocess, rt, label)
        previous = data
        if float_model is None and not st.exact:
            float_model = before
        variants[st.stem] = VariantEval(
            file=st.file,
            size_mb=st.size_mb,
            sets=score_sets(preds, sets.labels, ref_preds, scoring, before),
            texts_of=reused[0] if reused else None,
            checked_images=reused[1] if reused else None,
        )
        before = (st.stem, preds)
    variants["final"] = VariantEval(
        file="model.onnx",
        size_mb=round(modelio.size_mb(build / "model.onnx"), 3),
        sets=score_sets(before[1], sets.labels, ref_preds, scoring, float_model or before),
    )
    return EvalRecord(target=target, sets=sets.sizes, variants=variants)


Classes = tuple[tuple[str, ...], int, str]


def _classes(model: onnx.ModelProto) -> Classes:
    """What a model's outputs mean: an exact pass that keeps them reads the same texts (one
    that drops classes, like prune_charset, is exact only on the classes it keeps)."""
    spec = modelio.spec(model)
    return tuple(spec.charset), spec.blank, spec.layout


def _same_classes(data: bytes, before: Classes) -> tuple[bool, Classes]:
    """Whether the stage model `data` has its input's output classes, and its own."""
    now = _classes(onnx.load_from_string(data))
    return now == before, now


def _exact_stage(
    model: Path,
    sets: EvalSets,
    preprocess: Preprocess,
    rt: Runtime,
    before: tuple[str, dict[str, list[str]]],
    n: int,
    label: str,
) -> tuple[dict[str, list[str]], tuple[str, int] | None]:
    """An exact pass's model (the build checked its outputs within the recipe's tolerance)
    reads the first `n` images of every set; where its texts equal its input stage's on all of
    them, the input's texts stand for each whole set (a float re-association flips a text only
    at an exact tie), else it reads every image. Returns the texts and (input stage, n) when
    they were taken from it."""
    name, texts = before
    head = {s: xs[:n] for s, xs in sets.tensors(preprocess).items()}
    bar = Progress(f"{label} (exact pass: first {n} per set)", sum(map(len, head.values())))
    got = {s: predict(model, xs, rt, bar) for s, xs in head.items()}
    bar.close()
    differ = {s: sum(a != b for a, b in zip(got[s], texts[s][:n], strict=True)) for s in got}
    if not any(differ.values()):
        print(f"{label}: same texts as {name} on the first {n} of every set: its texts", flush=True)
        return texts, (name, n)
    print(
        f"{label}: texts differ from {name} on {differ} of the first {n}: reading all", flush=True
    )
    return sets.predict(model, preprocess, rt, label), None
