"""One shape per record: what a stage writes and the next reads, typed once and imported by both.

Writers build these models and dump them; readers validate the file back into the same model,
so a field renamed on one side fails loudly on the other (and in the tests, which build their
records with the real writers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from .atomic import write_json
from .errors import PipelineError
from .yamlio import field_path

R = TypeVar("R", bound=BaseModel)

# file names inside build/<C>/model that later stages read
RECIPE_FILE, BUILD_FILE, CHECKS_FILE = "recipe.json", "build.json", "checks.json"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RecordError(PipelineError):
    """A record file is missing or does not have the shape its reader expects."""


def read_record(path: str | Path, model: type[R]) -> R:
    path = Path(path)
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RecordError(f"{path}: missing; run the stage that writes it first") from None
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RecordError(
            f"{path}: not a valid {model.__name__} ({field_path(first['loc']) or '<root>'}: "
            f"{first['msg']}{more}); rerun the stage that writes it"
        ) from None
    except ValueError as e:  # not JSON
        raise RecordError(
            f"{path}: not a valid {model.__name__} ({str(e).splitlines()[0]}); rerun the stage "
            "that writes it"
        ) from None


def write_record(path: str | Path, record: BaseModel) -> None:
    write_json(path, record.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------------------- data


class SourceSummary(Record):
    """data/<source>/summary.json"""

    name: str
    kind: str  # synthetic | folder
    generator: str | None = None
    # a synthetic source's label characters, and how many the charset allows: with charset
    # 'model' only those the fonts draw, so accuracy on it says nothing of the others
    alphabet: str | None = None
    allowed: int | None = None
    path: str | None = None
    splits: dict[str, int]
    skipped: list[dict[str, str]] = Field(default_factory=list)  # name, code, detail
    duplicates: list[dict[str, Any]] = Field(default_factory=list)  # name, same_as, conflict
    ignored: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------- build


class RecipeFile(Record):
    """build/<C>/model/recipe.json: the resolved recipe the build ran (downstream stages read
    this, never the YAML), the contract of the model it made and the library versions it ran
    with."""

    target: str
    recipe: dict[str, Any]  # Recipe.resolved(); recipe.Recipe.from_resolved reads it back
    # contract.Contract for the final model (Contract.for_model); build.read_build_contract
    # checks it (typed here, every stage reading any record would depend on contract.py)
    contract: dict[str, Any]
    versions: dict[str, str]


class SourceUse(Record):
    """Whether a build's decisions used a data source: the source model's accuracy on its
    first val images, and whether that reached data.min_accuracy."""

    accuracy: float | None  # None: no val images to judge by (kept)
    images: int
    used: bool
    kind: str | None = None  # synthetic | folder (from the source's summary.json)
    alphabet: str | None = None  # a synthetic source's label characters
    allowed: int | None = None  # how many characters the charset allows


class SensitivityRow(Record):
    node: str
    op_type: str
    group: str  # static | dynamic
    rel_mse: float
    quantized: bool | None = None
    macs: int | None = None  # per calibration tensor, when ranked by sensitivity per MAC


class ToleranceStep(Record):
    k: int  # static nodes kept float beyond keep_float
    dynamic: bool  # dynamic group quantized
    sets: dict[str, dict[str, float]]  # set -> accuracy (%), agreement (0..1)
    accepted: bool


class ScaleSearchRecord(Record):
    """quantize_to_tolerance's scale_search_images on the chosen static model."""

    factors: dict[str, float]  # activation tensor -> factor on its scale (only those != 1)
    rel_mse_before: float  # output error against the float model on the search tensors
    rel_mse_after: float


class QatRecord(Record):
    """quantize_to_tolerance's qat_images on the chosen static model: the mean per-frame KL
    divergence from the float model's class distribution before and after the fine-tune, on
    the tensors it trained on and on validation tensors it did not (3 significant digits)."""

    images: int
    epochs: int
    held_out_images: int
    kl_before: float
    kl_after: float
    held_out_kl_before: float
    held_out_kl_after: float


class ToleranceReport(Record):
    """quantize_to_tolerance's decision: every node's sensitivity, each variant tried per
    validation set, the nodes kept float and why."""

    reference: dict[str, float]  # set -> accuracy (%) of the input model
    # the pass's own report has it; build.json does not (PassSpec.measured: checks.json)
    sensitivity: list[SensitivityRow] = Field(default_factory=list)
    steps: list[ToleranceStep]
    float_nodes: list[str] = Field(default_factory=list)
    why: dict[str, str] = Field(default_factory=dict)
    scale_search: ScaleSearchRecord | None = None  # absent when the option is off
    qat: QatRecord | None = None  # absent when the option is off

    @model_serializer(mode="wrap")
    def _absent_when_off(self, handler: Any) -> dict[str, Any]:
        # models quantized without scale_search_images or qat_images keep the report (and
        # bytes) they had
        data = handler(self)
        for key in ("scale_search", "qat"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class StageRecord(Record):
    index: int
    pass_name: str = Field(alias="pass")
    file: str  # stages/NN-<pass>.onnx, relative to the build folder
    size_mb: float
    exact: bool  # checked against its input within the recipe's equivalence tolerance
    report: dict[str, Any] = Field(default_factory=dict)  # what the pass chose and why

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def tolerance(self) -> ToleranceReport | None:
        data = self.report.get("quantize_to_tolerance")
        return None if data is None else ToleranceReport.model_validate(data)


class BuildRecord(Record):
    """build/<C>/model/build.json: only what the build decided, so the model folder is the
    same bytes on any build CPU (timings and divergences go beside it, in build/<C>/)."""

    target: str
    stages: list[StageRecord]
    # per data source: whether the decisions used it (data.min_accuracy); empty from tests
    # that build without the check
    sources: dict[str, SourceUse] = Field(default_factory=dict)


class StageCheck(Record):
    """One stage's outputs against its input's, on the build machine's float kernels (their
    last digits differ between CPUs, hence outside the model folder)."""

    file: str  # as StageRecord.file
    max_abs_diff: float
    max_rel_diff: float
    argmax_agreement: float  # on the classes both models share
    dropped_best: float = 0.0  # steps whose best input class the pass removed (pruning)
    # the pass's report fields that measure this CPU's kernels (PassSpec.measured), by pass
    measured: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def sensitivity(self, pass_name: str) -> list[SensitivityRow]:
        """The per-node sensitivities pass `pass_name` measured (none when it reported none)."""
        rows = self.measured.get(pass_name, {}).get("sensitivity", [])
        return [SensitivityRow.model_validate(r) for r in rows]


class CheckRecord(Record):
    """build/<C>/checks.json: every stage's divergence (the report shows it; no stage that
    builds or ships a model depends on it)."""

    target: str
    machine: dict[str, Any]  # cpu and ISA flags of the machine whose kernels measured it
    stages: list[StageCheck]

    def of(self, file: str) -> StageCheck | None:
        return next((c for c in self.stages if c.file == file), None)


# ---------------------------------------------------------------------------- evaluation


class LengthScore(Record):
    n: int
    accuracy: float


class Change(Record):
    """Texts against another model's on the same images (scoring.flips): what a pass changed,
    or what a class's quantization changed against the float model it quantized."""

    against: str  # the variant compared with: reference or a stage's stem
    agreement: float
    right_to_wrong: int  # images the other model read right and this one wrong
    wrong_to_right: int


class SetScore(Record):
    images: int
    accuracy: float
    cer: float
    agreement: float | None = None  # with the reference model's normalized texts
    # a stage: against its input; final: against the float model it quantizes (the input of
    # the first lossy pass; final itself when no pass is lossy)
    change: Change | None = None
    by_length: dict[str, LengthScore]


class VariantEval(Record):
    file: str | None = None
    size_mb: float | None = None
    sets: dict[str, SetScore]
    # an exact pass's stage that read the first `checked_images` of every set as `texts_of`
    # (its input stage) did: that stage's texts stand for the rest of each set
    texts_of: str | None = None
    checked_images: int | None = None


class EvalRecord(Record):
    """build/<C>/eval.json: every model of a build on every evaluation set."""

    target: str
    sets: dict[str, int]  # evaluation set -> images
    variants: dict[str, VariantEval]  # reference, NN-<pass> ..., final


class ReferenceTexts(Record):
    """baselines/reference.json: the reference model's text for every evaluation image, read
    once here and by every class's evaluate instead of recomputed per class."""

    preprocess: dict[str, Any]  # the contract's preprocessing the texts were read with
    images: dict[str, list[str]]  # evaluation set -> image file names, in order
    texts: dict[str, list[str]]  # evaluation set -> texts, same order


class BaselinesRecord(Record):
    """build/baselines/accuracy.json"""

    stock: str  # what `stock` means for this source, in words
    sets: dict[str, int]
    variants: dict[str, VariantEval]


# ---------------------------------------------------------------------------- preprocess


class CandidateSet(Record):
    images: int
    accuracy: float
    cer: float


class PreprocessCandidate(Record):
    """One preprocessing candidate: its settings, its cost in a fresh interpreter (the probe)
    and the reference model's accuracy per set with it."""

    name: str
    settings: dict[str, Any]  # Preprocess.as_dict()
    preprocess_ms: float  # median per image
    import_rss_mb: float  # what importing its backend adds to peak RSS
    import_ms: float
    sets: dict[str, CandidateSet]


class PreprocessRecord(Record):
    """metrics/preprocess.json: every candidate on the first images of each decision set."""

    images: dict[str, int]  # set -> images scored
    candidates: dict[str, PreprocessCandidate]


# ---------------------------------------------------------------------------- bench


class SetAccuracy(Record):
    accuracy: float
    cer: float
    agreement: float | None = None
    change: Change | None = None  # final: against the float model it quantizes (SetScore)


class VariantMetrics(Record):
    """One measured variant of metrics/<C>.json (timings are medians over rounds)."""

    kind: str  # onnx | stock | bundle | floor
    floor: str | None = None  # the runtime_floor variant of the same process kind
    size_mb: float | None = None
    ships_mb: float | None = None  # bundles: what an app ships, manifest included
    optional_mb: float | None = None  # bundles: what it may leave out (the fallback)
    skipped: str | None = None
    timed_with: str | None = None  # same kind, model bytes and settings: that variant's runs
    cold_start_ms: float | None = None
    import_ms: float | None = None  # runtime libraries (and ddddocr for stock)
    session_ms: float | None = None  # building the recognizer: sessions, charset
    first_ms: float | None = None  # the first recognition
    warm_p50_ms: float | None = None
    warm_p95_ms: float | None = None
    model_p50_ms: float | None = None
    peak_rss_mb: float | None = None
    cpu_s_per_1000: float | None = None  # user + sys CPU seconds per 1000 recognitions
    attributable_cold_start_ms: float | None = None  # minus the same kind's runtime floor
    attributable_peak_rss_mb: float | None = None
    rss_warm_mb: float | None = None  # resident after warm-up (long-session run)
    rss_growth_mb: float | None = None  # resident after `long_session` calls minus rss_warm_mb
    # the same over the second half of those calls only: what a leak adds, without the
    # one-time growth of the first calls (the allocator's next block, a lazy fallback)
    rss_growth_late_mb: float | None = None
    long_session: int | None = None  # recognitions in the long-session run
    fallback_loaded: bool | None = None  # bundles: did any image load the fallback
    sets: dict[str, SetAccuracy] = Field(default_factory=dict)
    accuracy_source: str | None = None
    timed_accuracy: float | None = None
    ort_threads: int | None = None
    os_threads: int | None = None
    escaped_threads: int | None = None
    imported: list[str] = Field(default_factory=list)
    model_timing: str | None = None
    spread: dict[str, list[float]] = Field(default_factory=dict)


class Ratios(Record):
    """A variant against stock, same run: below 1 is better for size, cold start, peak RSS and
    CPU; above 1 is better for warm_speedup; accuracy_drop_pts > 0 means worse than stock."""

    size: float | None = None
    warm_speedup: float | None = None
    cold_start: float | None = None
    peak_rss: float | None = None
    cpu: float | None = None
    attributable_cold_start: float | None = None
    attributable_peak_rss: float | None = None
    accuracy_drop_pts: dict[str, float | None] = Field(default_factory=dict)


class Budget(Record):
    limit: float | None
    value: float | None
    ok: bool | None
    set: str | None = None  # the evaluation set an accuracy budget was judged on


# ---------------------------------------------------------------------------- verify


class ProfileSet(Record):
    """One evaluation set's fixed subset read on one CPU profile."""

    images: int
    accuracy: float  # exact match (0..1)
    reference_accuracy: float  # the float reference on the same images (0..1)
    accuracy_drop_pts: float  # reference_accuracy - accuracy
    agreement_reference: float  # texts equal to the float reference's (0..1)
    agreement_build: float  # texts equal to the build machine's, same model (0..1)
    max_abs_diff: float  # largest output difference from the build machine's, same model


class ProfileRun(Record):
    """The shipped model on one CPU profile (verify/<C>.json, metrics/<C>.json `profiles`)."""

    how: str  # native | emulated | float (this machine's run stands for it) | unavailable
    note: str  # what the profile's int8 kernels do differently
    emulator: str | None = None  # the command prefix, where emulated
    reason: str | None = None  # why it did not run, where unavailable
    sets: dict[str, ProfileSet] = Field(default_factory=dict)
    within_budget: bool | None = None  # every set's drop <= the class's max_accuracy_drop_pts
    # the bundle's conformance vectors on this profile (None: not run, or no vectors)
    conformance: bool | None = None
    conformance_max_diff: float | None = None  # largest output difference from the vectors'
    conformance_failure: str | None = None  # the first failing vector and why


class ClientSet(Record):
    images: int
    accuracy: float
    agreement_python: float  # texts equal to the Python runtime's primary read of the same files


class ClientRun(Record):
    """The bundle through a reference client in another language (clients/js), on this
    machine: the client decodes the image files itself, as an app would."""

    runtime: str  # e.g. onnxruntime-node 1.30.0
    reason: str | None = None  # why it did not run
    sets: dict[str, ClientSet] = Field(default_factory=dict)
    conformance: bool | None = None
    conformance_failure: str | None = None


class VerifyRecord(Record):
    """verify/<C>.json: what each declared CPU profile reads through the bundle, against the
    build's reading (the same on every x86 machine: kept where machine.json `numerics` is)."""

    target: str
    model_file: str  # the bundle file an app runs (model.ort or model.onnx)
    images_per_set: int
    resolution_pts: float  # one image of a set, in accuracy points
    max_accuracy_drop_pts: float | None  # the class's budget, applied per profile and set
    build_machine: dict[str, Any]  # cpu and ISA flags of the machine that ran this stage
    build_reading: str  # what agreement_build and max_abs_diff compare with
    profiles: dict[str, ProfileRun]


class ClientsRecord(Record):
    """verify/clients/<C>.json: the bundle through each reference client on this machine
    (onnxruntime-node runs this CPU's own kernels, so it is remeasured per machine)."""

    target: str
    machine: dict[str, Any]  # cpu and ISA flags of the machine the clients ran on
    images_per_set: int | None  # None: no pixel-feed bundle, nothing read
    clients: dict[str, ClientRun] = Field(default_factory=dict)  # node, wasm


class MemorySetting(Record):
    """One row of metrics/<C>.json `memory_settings`: a flipped session memory setting on the
    shipped file against the recipe's own (mem:recipe), same run; deltas are this minus that."""

    variant: str  # mem:recipe or mem:<setting>
    setting: str  # recipe, or the flip, e.g. enable_cpu_mem_arena=off
    cold_start_ms: float | None
    peak_rss_mb: float | None
    rss_growth_mb: float | None  # None: no long session for this variant
    rss_growth_late_mb: float | None  # over the second half of the long session
    warm_p50_ms: float | None
    peak_rss_delta_mb: float | None
    cold_start_delta_ms: float | None
    warm_p50_delta_ms: float | None


class BenchRecord(Record):
    """metrics/<C>.json"""

    target: str
    description: str
    threads: int
    affinity: list[int]
    worker_affinity: list[list[int]]
    machine: dict[str, Any]
    dataset: dict[str, Any]
    stock: str  # what the stock baseline is, in words
    variants: dict[str, VariantMetrics]
    ratios: Ratios | None = None  # final vs stock
    ratios_spread: dict[str, list[float]] = Field(default_factory=dict)
    bundle_ratios: Ratios | None = None  # bundle (fallback not loaded) vs stock
    bundle_ratios_spread: dict[str, list[float]] = Field(default_factory=dict)
    vs_stock_default: Ratios | None = None
    budgets: dict[str, Budget]
    memory_settings: list[MemorySetting] = Field(default_factory=list)
    compute_floor: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, ProfileRun] = Field(default_factory=dict)  # verify/<C>.json's runs
    # the machine that ran them (VerifyRecord.build_machine): another x86 one keeps them
    profiles_machine: dict[str, Any] = Field(default_factory=dict)
    clients: dict[str, ClientRun] = Field(default_factory=dict)  # verify/clients/<C>.json's


# ---------------------------------------------------------------------------- serve_bench


class ServedBundle(Record):
    path: str
    target: str
    batch: bool  # the model takes a batch dimension (else no batched runs)
    formats: list[str]


class ServeSettings(Record):
    workers: int
    batch: int
    batch_wait_ms: float
    server_cores: list[int]
    client_cores: list[int]
    requests: int  # per run
    stock_requests: int | None  # per stock run; None: stock not served
    warmup: int  # untimed requests per server before the runs


class Latency(Record):
    p50: float | None  # None: no request answered
    p95: float | None


class ServeRun(Record):
    """One backend at one client count: `requests` recognitions from `clients` threads."""

    backend: Literal["bundle", "stock"]
    batching: bool
    clients: int
    requests: int
    ok: int
    errors: dict[str, int]  # error code -> requests
    wall_s: float
    throughput_rps: float | None
    latency_ms: Latency
    batches: int
    mean_batch_size: float | None
    # against stock at the same clients (None: stock not served or no figure)
    throughput_vs_stock: float | None = None
    p50_vs_stock: float | None = None


class ServeRecord(Record):
    """metrics/serve.json: the escalation server against stock ddddocr served the same way."""

    machine: dict[str, Any]  # measure.machine.machine_info(), as BenchRecord's
    bundle: ServedBundle
    images: int  # in the pool the clients send from
    settings: ServeSettings
    runs: list[ServeRun]  # interleaved: every backend at N clients, then the next N


class LeverSet(Record):
    """A variant's texts on one set against the float model the class quantizes."""

    images: int
    accuracy: float  # exact match, 0..1
    accuracy_delta_pts: float  # against the float model's accuracy on the same images
    agreement: float  # texts equal to the float model's (0..1)
    right_to_wrong: int  # images the float model read right and the variant wrong
    wrong_to_right: int


class LeverRow(Record):
    """One variant of a class's pass options: what the build made of it, and its figures."""

    name: str  # "shipped": the class's model as built
    patch: dict[str, Any]  # params.yaml levers.variants.<class>.<name>
    error: str | None = None  # the pass refused (a gate it cannot meet: its best numbers)
    size_mb: float | None = None
    warm_ms: float | None = None  # median per image, this machine, beside the float model's
    float_nodes: list[str] = Field(default_factory=list)  # what the quantizer kept float
    val: dict[str, LeverSet] = Field(default_factory=dict)  # decision sets
    eval: dict[str, LeverSet] = Field(default_factory=dict)  # evaluation sets (no decision)
    qat: QatRecord | None = None  # the quantizer's fine-tune, when the variant asked for one


class LeverRecord(Record):
    """metrics/levers/<C>.json: a class's quantization variants against its float model (no
    rows when params.yaml lists no variant for the class)."""

    target: str
    machine: dict[str, Any]  # measure.machine.machine_info(): whose kernels timed the rows
    eval_images: int | None  # first images per evaluation set (None: all)
    timing_images: int
    timing_rounds: int = 1  # interleaved rounds every model was timed in
    float_model: str | None = None  # the build's file every row is compared with
    float_size_mb: float | None = None
    float_warm_ms: float | None = None
    rows: list[LeverRow] = Field(default_factory=list)  # "shipped" first
    # the shipped model's static int8 group in parts (levers.Scorer.split): which part costs
    # the agreement; scored like rows, not timed, not shippable (their kernels are float)
    split: list[LeverRow] = Field(default_factory=list)
    # the float model with its weights slightly changed (levers.Scorer.fragility,
    # stages/perturb.py): how many of its texts any small change flips; scored, not timed
    fragility: list[LeverRow] = Field(default_factory=list)
