"""Typed model of params.yaml (targets, model, charset, data sources, bench, serve, verify,
profiles, pins and per-class overrides), loaded with errors that name the file and the field.

Overrides of classes not in `targets` and baselines the model source lacks are set aside, not
refused (Params.notes says so); stages/recipe.py applies a target's override to its recipe.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ocr_bundles_runtime.preprocess import Preprocess

from . import charset as charsets
from .contract import ModelParams, Strict, read_model_charset
from .data.folder import FolderSource
from .data.sources import SyntheticSource
from .errors import RecipeError
from .profiles.profile import CpuProfile
from .yamlio import merge, raise_validation, read_yaml

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # source and class names: folder- and DVC-safe


class DataParams(Strict):
    """params.yaml `data:` every named source, split into calib / val / eval."""

    synthetic: dict[str, SyntheticSource] = Field(
        default_factory=dict, description="generated styles, by source name"
    )
    folders: dict[str, FolderSource] = Field(
        default_factory=dict, description="folders of your own labeled images, by source name"
    )

    min_accuracy: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="a source the source model reads below this (share of its first val "
        "images) is left out of calibration and validation: decisions on it would follow "
        "noise; 0 keeps every source",
    )

    @model_validator(mode="after")
    def _names(self) -> Self:
        both = sorted(set(self.synthetic) & set(self.folders))
        if both:
            raise ValueError(f"source names {both} are used twice; give each source its own name")
        bad = [n for n in self.sources() if not NAME.match(n)]
        if bad:
            raise ValueError(f"source names {bad} must be lowercase letters, digits, '_' or '-'")
        if not self.sources():
            raise ValueError("no data source: add one under synthetic or folders")
        if not self.decision_sources():
            raise ValueError(
                "every data source is eval_only: the build needs one to calibrate and decide on"
            )
        return self

    def sources(self) -> list[str]:
        """Every source (and so evaluation set) name, synthetic first, in params order."""
        return [*self.synthetic, *self.folders]

    def decision_sources(self) -> list[str]:
        """The sources decisions may see: every one not marked eval_only."""
        every = {**self.synthetic, **self.folders}
        return [name for name in self.sources() if not every[name].eval_only]


Baseline = Literal["stock", "stock_default", "naive_int8"]
# baselines only one model source has: name -> (that source, what the baseline is)
SOURCE_ONLY: dict[str, tuple[str, str]] = {"stock_default": ("ddddocr", "ddddocr's own int8 model")}


class BenchParams(Strict):
    repeats: int = Field(4, ge=1, description="interleaved rounds; figures are medians")
    budget_minutes: float | None = Field(
        3.0,
        gt=0,
        description="one class's bench aims to finish within this: after the first round it "
        "projects the stage, and on a machine too slow for repeats and long_session it runs "
        "fewer rounds and shorter long sessions (at least 3 and 200: measure/budget.py); "
        "null: always as asked",
    )
    warm_images: int = Field(50, ge=1, description="images timed per round after warm-up")
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    long_session: int = Field(
        1000, ge=0, description="recognitions in one process for rss_growth_mb (0: skip)"
    )
    long_session_scope: Literal["shipped", "all"] = Field(
        "shipped",
        description="which variants get a long session: shipped (stock, the bundle with and "
        "without fallback, the arena flip, the runtime floors) or all (every variant: a stage "
        "model, final, naive_int8 too; several times the bench's time)",
    )
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["stock", "stock_default", "naive_int8"],
        description="measured beside every class in the same run: stock (what users run "
        "today), stock_default (ddddocr's int8 model; skipped unless model.source is ddddocr), "
        "naive_int8",
    )
    floor_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 512, 1024],
        min_length=1,
        description="n of the n x n x n MatMul and MatMulInteger the compute floor times (the "
        "fastest of them is the floor's rate): small ones stay in cache, large ones amortize "
        "call overhead",
    )


class ServeParams(Strict):
    """The escalation server's bench (serve_bench stage): one class's bundle behind HTTP, with
    stock ddddocr served the same way in the same run."""

    target: str = Field("high", description="the class whose bundle the server runs")
    clients: list[int] = Field(
        default_factory=lambda: [1, 4], min_length=1, description="concurrent clients per run"
    )
    requests: int = Field(300, ge=1, description="requests per run")
    batching: list[bool] = Field(
        default_factory=lambda: [True, False],
        min_length=1,
        description="batching on and/or off (only where the bundle's model batches)",
    )

    @field_validator("clients")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError(f"client counts must be >= 1, got {value}")
        return value


class VerifyParams(Strict):
    """The verify stage: each bundle on each CPU profile its class declares."""

    images: int = Field(
        100,
        ge=1,
        description="first images of each evaluation set run per profile (a fixed subset: "
        "emulation costs 55-165x native time); one image is 100/images points",
    )
    client_images: int = Field(
        300,
        ge=1,
        description="first images of each evaluation set the reference clients (clients/js: "
        "onnxruntime-node and -web) read per pixel-feed bundle, against the Python runtime "
        "(the clients stage, on this machine)",
    )


class LeverParams(Strict):
    """The levers stage: variants of a class's pass options measured beside the shipped model."""

    eval_images: int | None = Field(
        None, ge=1, description="first images of each evaluation set scored; null: all"
    )
    timing_images: int = Field(
        200, ge=1, description="images of the first validation set timed per variant"
    )
    timing_rounds: int = Field(
        3,
        ge=1,
        description="interleaved rounds: each times every model (the float one too) on those "
        "images, in an order rotated per round, so a slow moment of the machine is shared",
    )
    agreement_goal: float = Field(
        0.97,
        gt=0,
        le=1,
        description="agreement with the float model a lossy class aims at on every evaluation "
        "set: the report's verdict under each levers table says which variants reach it within "
        "the class's size and speed budgets",
    )
    variants: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="per class, named patches of its pass options (as in overrides.<class>."
        "passes): each is built with the class's decision data and scored",
    )
    weight_noise: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.003, 0.01],
        description="relative sizes of the seeded random changes of every weight of the float "
        "model that each class with variants also scores (stages/perturb.py), beside its "
        "weights in float16: how many texts any small change flips, per set",
    )
    noise_seed: int = Field(0, ge=0, description="seed of those random changes")

    @field_validator("variants")
    @classmethod
    def _not_shipped(cls, v: dict[str, dict[str, dict[str, Any]]]) -> dict:
        for target, named in v.items():
            if "shipped" in named:
                raise ValueError(
                    f"levers.variants.{target}.shipped: 'shipped' names the class's own model "
                    "in the levers table; call the variant something else"
                )
        return v


class EvalParams(Strict):
    """The evaluate stage."""

    exact_check_images: int = Field(
        100,
        ge=0,
        description="a stage of an exact pass (build-checked within the recipe's equivalence "
        "tolerance) reads the first images of each set; if its texts equal its input stage's, "
        "that stage's texts stand for the whole set (the record says so), else it reads them "
        "all. 0: every stage reads every image",
    )


class PreprocessBench(Strict):
    images: int = Field(
        600, ge=1, description="evaluation images per set each candidate is scored on"
    )
    candidates: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named preprocessing changes to the model's input contract",
    )


class Params(Strict):
    targets: list[str] = Field(min_length=1, description="device classes to build")
    model: ModelParams = Field(default_factory=ModelParams)
    charset: str = Field(
        "lower_digits", description="allowed characters: a preset, 'chars:...' or 'model'"
    )
    data: DataParams = Field(description="data sources")
    evaluate: EvalParams = Field(default_factory=EvalParams)
    bench: BenchParams = Field(default_factory=BenchParams)
    preprocess: PreprocessBench = Field(default_factory=PreprocessBench)
    serve: ServeParams = Field(default_factory=ServeParams)
    profiles: dict[str, CpuProfile] = Field(
        default_factory=dict, description="named CPU profiles recipes declare (data, not code)"
    )
    verify: VerifyParams = Field(default_factory=VerifyParams)
    levers: LeverParams = Field(default_factory=LeverParams)
    versions: dict[str, str] = Field(description="pinned library versions the builds depend on")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-class patches of recipe fields"
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Params:
        # RecipeError is not a ValueError: pydantic lets it through with its file and field
        self.cross_check((info.context or {}).get("file", "params.yaml"))
        return self

    def cross_check(self, file: str) -> None:
        """Rules spanning fields, each reported at the field to change."""
        try:
            charsets.resolve(self.charset, [] if self.charset == charsets.MODEL else None)
        except ValueError as e:
            raise RecipeError(file, "charset", str(e)) from None
        for name, src in self.data.synthetic.items():
            if self.charset == charsets.MODEL:  # the model's dictionary: the stage checks
                break
            outside = sorted(set(src.style.alphabet or "") - set(self.allowed_chars()))
            if outside:
                raise RecipeError(
                    file,
                    f"data.synthetic.{name}.style.alphabet",
                    f"uses {outside}, which charset '{self.charset}' excludes; remove the "
                    "alphabet to follow the charset, or widen the charset",
                )
        for name, cand in self.preprocess.candidates.items():
            try:
                self.preprocess_for(cand)
            except (TypeError, ValueError) as e:
                raise RecipeError(file, f"preprocess.candidates.{name}", str(e)) from None

    # Overrides of non-targets and baselines the source lacks are set aside, not refused, so
    # that changing targets or model.source leaves params.yaml valid; notes() says what.

    def ignored_overrides(self) -> list[str]:
        """Classes with an override that are not targets: never read (see override_for)."""
        return [name for name in self.overrides if name not in self.targets]

    def override_for(self, target: str) -> dict[str, Any] | None:
        """`overrides.<target>`, only for a target."""
        return self.overrides.get(target) if target in self.targets else None

    def skipped_baselines(self) -> dict[str, str]:
        """Listed baselines that do not apply to model.source, with why."""
        out = {}
        for name in self.bench.baselines:
            source, what = SOURCE_ONLY.get(name, (self.model.source, ""))
            if source != self.model.source:
                out[name] = f"{what} applies only to model.source {source}"
        return out

    def applicable_baselines(self) -> list[Baseline]:
        """The baselines the baselines and bench stages run, in params order."""
        skipped = self.skipped_baselines()
        return [name for name in self.bench.baselines if name not in skipped]

    def bench_as_run(self) -> BenchParams:
        """`bench` with only the applicable baselines (what the bench stage measures)."""
        return self.bench.model_copy(update={"baselines": self.applicable_baselines()})

    def notes(self) -> list[str]:
        """One line per setting that is set aside, naming its field."""
        targets = ", ".join(self.targets)
        out = [
            f"overrides.{name} ignored: {name} is not in targets [{targets}]"
            for name in self.ignored_overrides()
        ]
        out += [
            f"levers.variants.{name} ignored: {name} is not in targets [{targets}]"
            for name in self.levers.variants
            if name not in self.targets
        ]
        skipped = self.skipped_baselines().items()
        return out + [f"bench.baselines {n} skipped: {why}" for n, why in skipped]

    def preprocess_for(self, changes: dict[str, Any]) -> Preprocess:
        """The model's input contract with `changes` applied."""
        return Preprocess(**merge(self.model.input.as_dict(), changes))

    def check_versions(self, file: str) -> None:
        """The installed libraries must be the ones params.yaml pins (DVC keys on these)."""
        for lib, pinned in self.versions.items():
            installed = metadata.version(lib)
            if installed != pinned:
                raise RecipeError(
                    file,
                    f"versions.{lib}",
                    f"pins {pinned} but {installed} is "
                    "installed; reinstall the project (pip install -e .)",
                )

    def allowed_chars(self, model_charset: list[str] | None = None) -> str:
        """The allowed characters; charset 'model' needs the model stage's dictionary."""
        return charsets.resolve(self.charset, model_charset)

    def site_chars(self, model_dir: Path) -> str:
        """The allowed characters; charset 'model' reads the model stage's dictionary from
        `model_dir` (its charset.json)."""
        whole = self.charset == charsets.MODEL
        return self.allowed_chars(read_model_charset(model_dir) if whole else None)


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = read_yaml(path)
    try:
        return Params.model_validate(raw, context={"file": str(path)})
    except ValidationError as e:
        raise_validation(str(path), "", e)
