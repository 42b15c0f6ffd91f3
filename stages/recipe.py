"""Typed models of configs/<class>.yaml, pipeline.yaml and params.yaml, loaded with errors that
name the file and the field. Everything is validated before any model is loaded.

A class's recipe is merged from: the model's input contract (preprocessing) < pipeline.yaml
`defaults` < configs/<class>.yaml < params.yaml `overrides.<class>`; an override of a pass's
options patches only the fields it names, and `overrides.<class>.passes.<name>: null` drops
the pass. Overrides of classes not in `targets` are ignored (Params.notes says so).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ocr_bundles_runtime.preprocess import Preprocess
from ocr_bundles_runtime.session import Runtime

from . import charset as charsets
from . import registry
from .contract import ModelParams, Strict
from .data.folder import FolderSource
from .data.sources import SyntheticSource
from .errors import FieldValueError, RecipeError, UnknownNameError
from .profiles.profile import CpuProfile

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # source and class names: folder- and DVC-safe


class Equivalence(Strict):
    """How closely an exact pass must reproduce its input model's outputs."""

    rtol: float = Field(1e-3, ge=0, description="relative tolerance on the outputs")
    atol: float = Field(1e-3, ge=0, description="absolute tolerance on the outputs")
    images: int = Field(8, ge=1, le=256, description="calibration images compared per pass")


class Budgets(Strict):
    """Limits the report checks the final model against (null = not budgeted). The accuracy
    budget applies to every evaluation set, not to their average."""

    max_size_mb: float | None = Field(None, gt=0, description="what the app ships, in MB")
    max_warm_p50_ms: float | None = Field(
        None, gt=0, description="the bundle's end-to-end median latency"
    )
    max_peak_rss_mb: float | None = Field(
        None, gt=0, description="the bundle's peak resident memory (fallback not loaded)"
    )
    max_accuracy_drop_pts: float | None = Field(
        None, ge=0, description="exact-match drop against the reference model on each set, points"
    )
    max_attributable_rss_ratio: float | None = Field(
        None,
        gt=0,
        description="peak RSS above the runtime floor, as a share of stock's (same run)",
    )
    max_cpu_ratio: float | None = Field(
        None, gt=0, description="CPU seconds per 1000 recognitions, as a share of stock's"
    )
    min_warm_speedup: float | None = Field(
        None,
        gt=0,
        description="stock's warm p50 over the bundle's (same run, same cores): holds across "
        "machines where a millisecond limit does not",
    )


FALLBACK = re.compile(r"^(none|float|stage:[A-Za-z0-9_.-]+|class:[a-z0-9][a-z0-9_-]*)$")


class Escalation(Strict):
    url: str | None = Field(
        None, description="server for images still unsure after the fallback (null: none)"
    )
    timeout_s: float = Field(2.0, gt=0, le=60, description="wait at most this long for it")


class BundleOptions(Strict):
    """What the deployable bundle ships, what is optional, and when its runtime escalates."""

    confidence_threshold: float = Field(
        0.5, ge=0, le=1, description="below it, retry with the fallback model (then the server)"
    )
    formats: list[Literal["ort", "onnx"]] = Field(
        default_factory=lambda: ["ort"],
        min_length=1,
        description="model formats shipped; the first is what the runtime loads by default",
    )
    fallback: str = Field(
        "none",
        description="the optional retry model: none; float (the latest float stage, pruned to "
        "the final charset if needed); stage:<stage or pass name>; class:<another class>",
    )
    escalation: Escalation = Field(default_factory=Escalation)
    preprocess: Literal["host", "graph"] = Field(
        "host",
        description="host: the app preprocesses (Python runtime: Pillow); graph: the shipped "
        "model takes decoded uint8 [H, W, C] pixels and resizes, converts and normalizes in "
        "ONNX ops (stages/pixel_graph.py), so any language feeds pixels",
    )
    conformance: int = Field(
        8, ge=1, le=64, description="conformance vectors (PNG + expected outputs) in the bundle"
    )

    @field_validator("formats")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a format twice: {value}")
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: str) -> str:
        if not FALLBACK.match(value):
            raise ValueError(
                f"{value!r} is not none, float, stage:<name> or class:<name> (e.g. stage:"
                "prune_charset, class:mid)"
            )
        return value


@dataclass(frozen=True)
class PassStep:
    """One recipe entry: the registered pass name and its validated options object."""

    name: str
    options: BaseModel


class Recipe(Strict):
    """A device class: ordered passes plus how the result is fed, run, shipped and judged."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    description: str = Field(description="one line: who this class is for")
    passes: list[PassStep] = Field(description="ordered passes, each {name: {options}}")
    preprocess: Preprocess = Field(default_factory=Preprocess)
    runtime: Runtime = Field(default_factory=Runtime)
    equivalence: Equivalence = Field(default_factory=Equivalence)
    budgets: Budgets = Field(default_factory=Budgets)
    bundle: BundleOptions = Field(default_factory=BundleOptions)
    profiles: list[str] = Field(
        default_factory=list,
        description="the CPU profiles (params.yaml profiles) this class's devices have; the "
        "verify stage runs the bundle on each",
    )

    def resolved(self) -> dict[str, Any]:
        """Plain data of the whole recipe, options included (written next to each model);
        `from_resolved` reads it back into an equal Recipe."""
        out = self.model_dump(mode="json", exclude={"passes"})
        out["passes"] = [{s.name: s.options.model_dump(mode="json")} for s in self.passes]
        return out

    @classmethod
    def from_resolved(cls, data: dict[str, Any], source: str = "recipe.json") -> Recipe:
        data = dict(data)
        steps = [_parse_step(source, i, item) for i, item in enumerate(data.pop("passes"))]
        return _validate(source, data, steps)


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
        return self

    def sources(self) -> list[str]:
        """Every source (and so evaluation set) name, synthetic first, in params order."""
        return [*self.synthetic, *self.folders]


Baseline = Literal["stock", "stock_default", "naive_int8"]
# baselines only one model source has: name -> (that source, what the baseline is)
SOURCE_ONLY: dict[str, tuple[str, str]] = {"stock_default": ("ddddocr", "ddddocr's own int8 model")}


class BenchParams(Strict):
    repeats: int = Field(5, ge=1, description="interleaved rounds; figures are medians")
    warm_images: int = Field(100, ge=1, description="images timed per round after warm-up")
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    long_session: int = Field(
        5000, ge=0, description="recognitions in one process for rss_growth_mb (0: skip)"
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
        "onnxruntime-node and -web) read per pixel-feed bundle, against the Python runtime",
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
    bench: BenchParams = Field(default_factory=BenchParams)
    preprocess: PreprocessBench = Field(default_factory=PreprocessBench)
    serve: ServeParams = Field(default_factory=ServeParams)
    profiles: dict[str, CpuProfile] = Field(
        default_factory=dict, description="named CPU profiles recipes declare (data, not code)"
    )
    verify: VerifyParams = Field(default_factory=VerifyParams)
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


class Pipeline(Strict):
    stages: list[str] = Field(description="stage names, in data-flow order (matches dvc.yaml)")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields every class starts from"
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(str(path), "", "file not found") from None
    except yaml.YAMLError as e:
        raise RecipeError(str(path), "", f"YAML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), "", f"must be a mapping, got {type(data).__name__}")
    return data


STYLE_TAGS = ("clean", "hard")  # pydantic adds the chosen generator to a style error's location


def field_path(loc: tuple[Any, ...]) -> str:
    """`data.synthetic.a.style.width` from pydantic's location, as the user wrote the field."""
    loc = tuple(
        part
        for i, part in enumerate(loc)
        if not (i and loc[i - 1] == "style" and part in STYLE_TAGS)
    )
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def raise_validation(
    file: str, prefix: str, err: ValidationError, fields: list[str] | None = None
) -> NoReturn:
    """Turn pydantic's error into one RecipeError naming file, field path, value and allowed."""
    first = err.errors()[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldValueError):  # a dataclass section's own check names its field
        first = {**first, "loc": (*first["loc"], cause.field)}
    if first["type"] == "extra_forbidden" and fields:
        first = {**first, "msg": f"unknown option; allowed options: {', '.join(fields)}"}
    path = field_path((prefix, *first["loc"]) if prefix else tuple(first["loc"]))
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (given: {given!r})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    raise RecipeError(file, path or "<root>", f"{first['msg']}{shown}{more}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = read_yaml(path)
    try:
        return Params.model_validate(raw, context={"file": str(path)})
    except ValidationError as e:
        raise_validation(str(path), "", e)


def load_pipeline(path: str | Path = "pipeline.yaml") -> Pipeline:
    try:
        return Pipeline.model_validate(read_yaml(path))
    except ValidationError as e:
        raise_validation(str(path), "", e)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; lists and scalars in `patch` replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(
    path: str | Path,
    defaults: dict[str, Any] | None = None,
    override: dict[str, Any] | None = None,
    override_source: str = "params.yaml: overrides",
    contract_input: Preprocess | None = None,
) -> Recipe:
    """Parse a class recipe (contract input < pipeline defaults < recipe file < params
    override) and validate every pass's options before anything heavy runs."""
    file = str(path)
    base = {"preprocess": (contract_input or Preprocess()).as_dict()}
    raw = merge(merge(base, defaults or {}), read_yaml(path))
    passes = raw.pop("passes", None)
    if not isinstance(passes, list) or not passes:
        raise RecipeError(file, "passes", "must be a non-empty list of {pass_name: {options}}")
    patch = dict(override or {})
    pass_patch = patch.pop("passes", {}) or {}
    if not isinstance(pass_patch, dict):
        raise RecipeError(override_source, "passes", "must map pass names to option patches")
    steps = [_parse_step(file, i, item) for i, item in enumerate(passes)]
    _validate(file, raw, steps)  # the recipe file's own errors name the recipe file
    steps = _patch_steps(steps, pass_patch, override_source)
    return _validate(override_source, merge(raw, patch), steps)


def _validate(source: str, raw: dict[str, Any], steps: list[PassStep]) -> Recipe:
    try:
        return Recipe.model_validate({**raw, "passes": steps})
    except ValidationError as e:
        raise_validation(source, "", e)


def _parse_step(file: str, i: int, item: Any) -> PassStep:
    where = f"passes[{i}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(
            file, where, f"must be a single-key mapping {{pass_name: {{options}}}}, got {item!r}"
        )
    ((name, options),) = item.items()
    try:
        spec = registry.get(name)
    except UnknownNameError as e:
        raise RecipeError(file, where, str(e)) from None
    try:
        return PassStep(name, spec.options.model_validate(options or {}))
    except ValidationError as e:
        raise_validation(file, f"{where}.{name}", e, list(spec.options.model_fields))


def _patch_steps(steps: list[PassStep], patch: dict[str, Any], source: str) -> list[PassStep]:
    """Patch the named passes' options (only the fields given), or drop a pass patched with
    null; a name the recipe does not have is an error listing the ones it has."""
    names = [s.name for s in steps]
    for name in patch:
        if name not in names:
            raise RecipeError(
                source,
                f"passes.{name}",
                f"this recipe has no such pass; its passes: {', '.join(names)}",
            )
    out = []
    for step in steps:
        if step.name not in patch:
            out.append(step)
        elif patch[step.name] is not None:
            out.append(_patched(step, patch[step.name], source))
    if not out:
        raise RecipeError(source, "passes", "dropping these passes leaves the recipe empty")
    return out


def _patched(step: PassStep, patch: Any, source: str) -> PassStep:
    if not isinstance(patch, dict):
        raise RecipeError(
            source, f"passes.{step.name}", f"must be a mapping of options or null, got {patch!r}"
        )
    # exclude_unset: options the recipe left at their defaults stay unset, so validators that
    # look at model_fields_set (e.g. quantize_static's percentile) see what the user wrote
    merged = merge(step.options.model_dump(exclude_unset=True), patch)
    options_type = type(step.options)
    try:
        return PassStep(step.name, options_type.model_validate(merged))
    except ValidationError as e:
        raise_validation(source, f"passes.{step.name}", e, list(options_type.model_fields))


def load_class(
    target: str,
    params: Params,
    pipeline: Pipeline,
    configs: str | Path,
    params_file: str | Path = "params.yaml",
    contract_input: Preprocess | None = None,
) -> Recipe:
    """The recipe of one device class as the build sees it."""
    path = Path(configs) / f"{target}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(configs).glob("*.yaml"))
        raise RecipeError(
            str(path),
            "",
            f"no recipe for device class '{target}'; known classes: {', '.join(known)}",
        )
    override = params.override_for(target)
    recipe = load_recipe(
        path,
        pipeline.defaults,
        override,
        f"{params_file}: overrides.{target}",
        contract_input or params.model.input,
    )
    unknown = [p for p in recipe.profiles if p not in params.profiles]
    if unknown:
        where = f"{params_file}: overrides.{target}" if "profiles" in (override or {}) else path
        raise RecipeError(
            str(where),
            "profiles",
            f"{unknown} are not CPU profiles of params.yaml; known: {sorted(params.profiles)} "
            "(add one under params.yaml profiles)",
        )
    return recipe
