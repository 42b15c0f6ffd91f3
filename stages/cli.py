"""`python -m stages <verb>`: one verb per DVC stage, plus `passes` and `recognize`.

Each verb reads its inputs, calls the pure functions of its module and writes atomically.
Exit codes: 0 ok, 2 bad input (recipe, params, model or image; the message says which), 1 bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from . import modelio, registry
from . import recipe as recipes
from .errors import PipelineError
from .preprocess import ImageError

log = logging.getLogger("stages")
VERBS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {}


def verb(name: str, help_: str):
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[name] = (fn, help_)
        return fn

    return wrap


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", type=Path)
    p.add_argument("--pipeline", default="pipeline.yaml", type=Path)
    p.add_argument("--configs", default="configs", type=Path)


@verb("passes", "list every registered pass with its options and defaults")
def cmd_passes(args: argparse.Namespace) -> int:
    _load_passes()
    for name in registry.names():
        spec = registry.get(name)
        tag = "exact" if spec.exact else "lossy"
        print(f"{name}  [{spec.kind}, {tag}]  {spec.doc}")
        for field, info in spec.options.model_fields.items():
            default = info.get_default(call_default_factory=True)
            print(f"    {field} = {default!r}: {info.description}")
    return 0


@verb("model", "copy the source recognizer and its charset into the pipeline")
def cmd_model(args: argparse.Namespace) -> int:
    from .source import load_source, write_source

    params = recipes.load_params(args.params)
    model, origin = load_source(params.model)
    write_source(args.out, model, origin)
    print(f"model: {origin.get('file')} -> {args.out} ({modelio.size_mb(model):.1f} MB)")
    return 0


@verb("data", "generate the seeded calibration, validation and evaluation captchas")
def cmd_data(args: argparse.Namespace) -> int:
    from .data import make_split, write_split

    params = recipes.load_params(args.params)
    d = params.data
    for offset, (split, n) in enumerate((("calib", d.calib), ("val", d.val), ("eval", d.eval))):
        write_split(args.out / split, make_split(d.style, n, d.seed + offset))
        print(f"data: {n} images -> {args.out / split}")
    return 0


@verb("preprocess", "measure every preprocessing candidate's cost and accuracy")
def cmd_preprocess(args: argparse.Namespace) -> int:
    from .preprocess_bench import run

    params = recipes.load_params(args.params)
    pp = params.preprocess
    result = run(pp.candidates, args.data, args.model / "model.onnx", pp.images)
    modelio.write_json(args.out, result)
    for name, row in result["candidates"].items():
        print(
            f"preprocess: {name}: {row['preprocess_ms']} ms/image, +{row['import_rss_mb']} MB "
            f"imports, accuracy {row['accuracy']:.4f}"
        )
    return 0


@verb("build", "apply a device class's passes to the source model")
def cmd_build(args: argparse.Namespace) -> int:
    from .build import run_passes, write_build
    from .data import read_split
    from .preprocess import preprocess_all

    params, recipe = _load_class(args)
    model = modelio.load(args.model / "model.onnx")
    calib = [p for p, _ in read_split(args.data / "calib")]
    val = read_split(args.data / "val")
    context = registry.PassContext(
        calibration=preprocess_all(calib, recipe.preprocess),
        validation=list(
            zip(
                preprocess_all([p for p, _ in val], recipe.preprocess),
                [t for _, t in val],
                strict=True,
            )
        ),
        allowed_chars=params.allowed_chars(),
        runtime=recipe.runtime,
        seed=params.data.seed,
    )
    results = run_passes(model, recipe, context)
    write_build(args.out, recipe, results, args.target)
    for r in results:
        print(
            f"build@{args.target}: {r.filename} {modelio.size_mb(r.model):.2f} MB "
            f"in {r.seconds:.1f}s, argmax agreement {r.divergence['argmax_agreement']:.4f}"
        )
    return 0


@verb("evaluate", "score the reference and every built model on the evaluation set")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_build

    _, recipe = _load_class(args)
    pipeline = recipes.load_pipeline(args.pipeline)
    result = evaluate_build(
        args.target, args.model, args.build, args.data, recipe, reference_preprocess(pipeline)
    )
    modelio.write_json(args.out, result)
    ref, fin = result["variants"]["reference"], result["variants"]["final"]
    print(
        f"evaluate@{args.target}: reference {ref['accuracy']:.4f}, final {fin['accuracy']:.4f}"
        f" (agreement {fin['agreement']:.4f})"
    )
    return 0


@verb("bundle", "package a class's final model, float fallback, charset and manifest for apps")
def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import write_bundle

    _, recipe = _load_class(args)
    doc = write_bundle(args.target, args.build, args.model, recipe, args.eval, args.out)
    fallback = doc["models"]["fallback"]["origin"]
    print(f"bundle@{args.target}: {len(doc['files'])} files -> {args.out} (fallback: {fallback})")
    return 0


@verb("recognize", "recognize images with a bundle: exit 0 ok, 3 bad image, 4 bad bundle, 1 bug")
def cmd_recognize(args: argparse.Namespace) -> int:
    from .recognize import cmd_recognize as recognize

    return recognize(args)


@verb("baselines", "build naive_int8 and score stock ddddocr on the evaluation set")
def cmd_baselines(args: argparse.Namespace) -> int:
    from .baselines import build_baselines

    params = recipes.load_params(args.params)
    pipeline = recipes.load_pipeline(args.pipeline)
    result = build_baselines(
        args.model,
        args.data,
        args.out,
        reference_preprocess(pipeline),
        recipes.Runtime(),
        params.bench.baselines,
    )
    for name, row in result["variants"].items():
        print(f"baselines: {name} accuracy {row['accuracy']:.4f}")
    return 0


@verb("bench", "measure every variant of a class in fresh pinned processes, interleaved")
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    params, recipe = _load_class(args)
    pipeline = recipes.load_pipeline(args.pipeline)
    result = run_bench(
        args.target,
        args.build,
        args.model,
        args.baselines,
        args.data,
        recipe,
        reference_preprocess(pipeline),
        BenchConfig.from_params(params.bench),
    )
    modelio.write_json(args.out, result)
    print(f"bench@{args.target}: ratios vs stock_beta {result.get('ratios')}")
    return 0


@verb("report", "write reports/<class>.md, reports/summary.md and plot data; embed in README")
def cmd_report(args: argparse.Namespace) -> int:
    from .report import embed_file, write_reports

    params = recipes.load_params(args.params)
    text = write_reports(params.targets, args.metrics, Path("build"), args.out, args.plots)
    if args.readme:
        embed_file(args.readme, text)
    print(f"report: {len(params.targets)} classes -> {args.out}")
    return 0


def reference_preprocess(pipeline: recipes.Pipeline):
    """The source model is judged as its own package feeds it: the pipeline's defaults."""
    from .preprocess import Preprocess

    return Preprocess(**pipeline.defaults.get("preprocess", {}))


def _load_class(args: argparse.Namespace) -> tuple[recipes.Params, recipes.Recipe]:
    _load_passes()
    params = recipes.load_params(args.params)
    params.check_versions(str(args.params))
    pipeline = recipes.load_pipeline(args.pipeline)
    if args.target not in params.targets:
        raise recipes.RecipeError(
            str(args.params),
            "targets",
            f"'{args.target}' is not a target; targets: {params.targets}",
        )
    return params, recipes.load_class(args.target, params, pipeline, args.configs, args.params)


def _load_passes() -> None:
    from . import passes  # noqa: F401 - registers every pass


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    for name, (_, help_) in VERBS.items():
        p = sub.add_parser(name, help=help_)
        _common(p)
        ARGS.get(name, lambda _p: None)(p)
    return ap


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True)
    p.add_argument("--model", type=Path, default=Path("models/source"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--build", type=Path)
    p.add_argument("--out", type=Path, required=True)


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=Path("models/source"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, required=True)


def _bundle_args(p: argparse.ArgumentParser) -> None:
    _target_args(p)
    p.add_argument("--eval", type=Path, help="eval.json whose figures the manifest summarizes")


def _recognize_args(p: argparse.ArgumentParser) -> None:
    from .recognize import add_recognize_args

    add_recognize_args(p)


def _baselines_args(p: argparse.ArgumentParser) -> None:
    _preprocess_args(p)


def _bench_args(p: argparse.ArgumentParser) -> None:
    _target_args(p)
    p.add_argument("--baselines", type=Path, default=Path("build/baselines"))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", type=Path, default=Path("metrics"))
    p.add_argument("--plots", type=Path, default=Path("plots"))
    p.add_argument("--readme", type=Path, help="README whose summary markers get the table")
    p.add_argument("--out", type=Path, required=True)


ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "model": lambda p: p.add_argument("--out", type=Path, required=True),
    "data": lambda p: p.add_argument("--out", type=Path, required=True),
    "preprocess": _preprocess_args,
    "build": _target_args,
    "evaluate": _target_args,
    "bundle": _bundle_args,
    "baselines": _baselines_args,
    "bench": _bench_args,
    "report": _report_args,
    "recognize": _recognize_args,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return VERBS[args.verb][0](args)
    except (PipelineError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
