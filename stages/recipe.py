"""Typed models of configs/<class>.yaml, pipeline.yaml and params.yaml, loaded with errors that
name the file and the field. Everything is validated before any model is loaded."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from . import charset as charsets
from . import registry
from .data import CaptchaStyle
from .errors import FieldValueError, RecipeError, UnknownNameError
from .inference import Runtime
from .preprocess import Preprocess


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Equivalence(Strict):
    """How closely an exact pass must reproduce its input model's outputs."""

    rtol: float = Field(1e-3, ge=0, description="relative tolerance on the logits")
    atol: float = Field(1e-3, ge=0, description="absolute tolerance on the logits")
    images: int = Field(8, ge=1, le=256, description="calibration images compared per pass")


class Budgets(Strict):
    """Limits the report checks the final model against (null = not budgeted)."""

    max_size_mb: float | None = Field(None, gt=0, description="final model file size")
    max_warm_p50_ms: float | None = Field(None, gt=0, description="end-to-end median latency")
    max_peak_rss_mb: float | None = Field(None, gt=0, description="peak resident memory")
    max_accuracy_drop_pts: float | None = Field(
        None, ge=0, description="exact-match drop against the reference model, in points"
    )


class BundleOptions(Strict):
    """What the deployable bundle carries and when its runtime escalates."""

    confidence_threshold: float = Field(
        0.5, ge=0, le=1, description="below it, retry with the float fallback model"
    )
    ort_format: bool = Field(True, description="also write the model in onnxruntime's .ort format")


@dataclass(frozen=True)
class PassStep:
    """One recipe entry: the registered pass name and its validated options object."""

    name: str
    options: BaseModel


class Recipe(Strict):
    """A device class: ordered passes plus how the result is fed, run and judged."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    description: str = Field(description="one line: who this class is for")
    passes: list[PassStep] = Field(description="ordered passes, each {name: {options}}")
    preprocess: Preprocess = Field(default_factory=Preprocess)
    runtime: Runtime = Field(default_factory=Runtime)
    equivalence: Equivalence = Field(default_factory=Equivalence)
    budgets: Budgets = Field(default_factory=Budgets)
    bundle: BundleOptions = Field(default_factory=BundleOptions)

    def resolved(self) -> dict[str, Any]:
        """Plain data of the whole recipe, options included (written next to each model)."""
        out = self.model_dump(mode="json", exclude={"passes"})
        out["passes"] = [{s.name: s.options.model_dump(mode="json")} for s in self.passes]
        return out


class ModelSource(Strict):
    """Which recognizer to optimize."""

    source: Literal["ddddocr", "file"] = Field("ddddocr", description="installed ddddocr or a file")
    ddddocr_model: Literal["beta", "old"] = Field(
        "beta", description="beta = common.onnx (fp32), old = common_old.onnx (already int8)"
    )
    path: str | None = Field(None, description="ONNX file when source is 'file'")
    charset_file: str | None = Field(
        None, description="JSON list of class strings (index = class) when source is 'file'"
    )
    layout: Literal["TBC", "BTC"] = Field("TBC", description="output axes order")
    blank: int = Field(0, ge=0, description="index of the CTC blank class")
    height: int = Field(64, ge=8, description="input height the model was trained for")
    channels: Literal[1, 3] = Field(1, description="input channels")

    @model_validator(mode="after")
    def _file_needs_paths(self) -> ModelSource:
        if self.source == "file" and not (self.path and self.charset_file):
            raise ValueError("source 'file' needs both 'path' and 'charset_file'")
        return self


class DataParams(Strict):
    seed: int = Field(20261125, description="seed of every generated image")
    calib: int = Field(64, ge=1, description="calibration images (quantization, equivalence)")
    val: int = Field(300, ge=1, description="validation images (accuracy-aware search)")
    eval: int = Field(2000, ge=1, description="evaluation images (all reported accuracy)")
    style: CaptchaStyle = Field(default_factory=CaptchaStyle)


class BenchParams(Strict):
    repeats: int = Field(5, ge=1, description="interleaved rounds; figures are medians")
    warm_images: int = Field(100, ge=1, description="images timed per round after warm-up")
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    baselines: list[Literal["stock_beta", "stock_default", "naive_int8"]] = Field(
        default_factory=lambda: ["stock_beta", "stock_default", "naive_int8"],
        description="what each class is measured against in the same run",
    )


class PreprocessBench(Strict):
    images: int = Field(500, ge=1, description="evaluation images each candidate is scored on")
    candidates: dict[str, Preprocess] = Field(
        default_factory=lambda: {"ddddocr": Preprocess()},
        description="named preprocessing settings to measure",
    )


class Params(Strict):
    targets: list[str] = Field(min_length=1, description="device classes to build")
    model: ModelSource = Field(default_factory=ModelSource)
    charset: str = Field("lower_digits", description="allowed characters: preset or 'chars:...'")
    data: DataParams = Field(default_factory=DataParams)
    bench: BenchParams = Field(default_factory=BenchParams)
    preprocess: PreprocessBench = Field(default_factory=PreprocessBench)
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
            charsets.resolve(self.charset)
        except ValueError as e:
            raise RecipeError(file, "charset", str(e)) from None
        unknown = sorted(set(self.overrides) - set(self.targets))
        if unknown:
            raise RecipeError(
                file,
                "overrides",
                f"classes {unknown} are not in targets "
                f"{self.targets}; add them to targets or remove their overrides",
            )
        outside = sorted(set(self.data.style.alphabet) - set(self.allowed_chars()))
        if outside:
            raise RecipeError(
                file,
                "data.style.alphabet",
                f"uses {outside}, which charset '{self.charset}' excludes",
            )

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

    def allowed_chars(self) -> str:
        return charsets.resolve(self.charset)


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


def field_path(loc: tuple[Any, ...]) -> str:
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
) -> Recipe:
    """Parse a class recipe (pipeline defaults < recipe file < params override) and validate
    every pass's options before anything heavy runs."""
    file = str(path)
    raw = merge(defaults or {}, read_yaml(path))
    passes = raw.pop("passes", None)
    if not isinstance(passes, list) or not passes:
        raise RecipeError(file, "passes", "must be a non-empty list of {pass_name: {options}}")
    patch = dict(override or {})
    pass_patch = patch.pop("passes", {}) or {}
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
            continue
        merged = merge(step.options.model_dump(), patch[step.name] or {})
        try:
            out.append(PassStep(step.name, type(step.options).model_validate(merged)))
        except ValidationError as e:
            fields = list(type(step.options).model_fields)
            raise_validation(source, f"passes.{step.name}", e, fields)
    return out


def load_class(
    target: str,
    params: Params,
    pipeline: Pipeline,
    configs: str | Path,
    params_file: str | Path = "params.yaml",
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
    return load_recipe(
        path, pipeline.defaults, params.overrides.get(target), f"{params_file}: overrides.{target}"
    )
