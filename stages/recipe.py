"""Typed models of configs/<class>.yaml and pipeline.yaml, loaded with errors that name the file
and the field. Everything is validated before any model is loaded.

A class's recipe is merged from: the model's input contract (preprocessing) < pipeline.yaml
`defaults` < configs/<class>.yaml < params.yaml `overrides.<class>`; an override of a pass's
options patches only the fields it names, and `overrides.<class>.passes.<name>: null` drops
the pass. Overrides of classes not in `targets` are ignored (Params.notes says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ocr_bundles_runtime.preprocess import Preprocess
from ocr_bundles_runtime.session import Runtime

from . import registry
from .contract import Strict
from .errors import RecipeError, UnknownNameError
from .params import Params
from .yamlio import merge, raise_validation, read_yaml


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


class Pipeline(Strict):
    stages: list[str] = Field(description="stage names, in data-flow order (matches dvc.yaml)")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields every class starts from"
    )


def load_pipeline(path: str | Path = "pipeline.yaml") -> Pipeline:
    try:
        return Pipeline.model_validate(read_yaml(path))
    except ValidationError as e:
        raise_validation(str(path), "", e)


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


def patched(recipe: Recipe, pass_patch: dict[str, Any], source: str) -> Recipe:
    """`recipe` with its passes' options patched as an override patches them (a pass patched
    with null is dropped); errors name `source`."""
    return recipe.model_copy(update={"passes": _patch_steps(recipe.passes, pass_patch, source)})


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
