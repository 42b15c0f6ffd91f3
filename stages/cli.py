"""`python -m stages <verb>`: one verb per DVC stage, plus `passes`, `recognize`, `sign` and
`serve`.

Each verb reads its inputs (every path from its command line, as dvc.yaml states it), calls the
pure functions of its module and writes atomically. Exit codes: 0 ok, 2 bad input (recipe,
params, model, data or image; the message says which), 1 bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import charset as charsets
from . import registry
from .errors import PipelineError, RecipeError
from .params import Params, load_params
from .recipe import Recipe, load_class, load_pipeline

if TYPE_CHECKING:
    from .contract import Contract

log = logging.getLogger("stages")
Verb = Callable[[argparse.Namespace], int]
VERBS: dict[str, tuple[Verb, str, Callable[[argparse.ArgumentParser], None]]] = {}


def verb(name: str, help_: str, *args: Callable[[argparse.ArgumentParser], None]):
    """Register `fn` as verb `name`; `args` add its options (see the helpers at the end)."""

    def wrap(fn: Verb) -> Verb:
        def add(p: argparse.ArgumentParser) -> None:
            for a in args:
                a(p)

        VERBS[name] = (fn, help_, add)
        return fn

    return wrap


def _params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=Path("params.yaml"), type=Path)


def _recipes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default=Path("pipeline.yaml"), type=Path)
    p.add_argument("--configs", default=Path("configs"), type=Path)


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="device class (configs/<target>.yaml)")


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="the model stage's folder")


def _dictionary(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=Path("models/source"),
        help="the model stage's folder, read only for charset 'model' (its charset.json)",
    )


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder of data/<source> folders")


def _build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build", type=Path, required=True, help="a build's model folder")


def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", type=Path, required=True, help="the class's eval.json")


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="the data source's name in params.yaml")


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


@verb("model", "bring the source recognizer and its contract into the pipeline", _params, _out)
def cmd_model(args: argparse.Namespace) -> int:
    from .source import load_source, write_source

    params = _load_params(args)
    model, contract, charset, origin = load_source(params.model, str(args.params))
    write_source(args.out, model, contract, charset, origin)
    size, out = model.ByteSize() / 1e6, contract.output
    print(
        f"model: {origin.get('file')} -> {args.out} ({size:.1f} MB, {out.classes} classes, "
        f"input {contract.input.channels}x{contract.input.height}, {out.kind}, "
        f"batch {'yes' if contract.batch else 'no'})"
    )
    return 0


@verb(
    "synthetic",
    "generate one synthetic data source's calib/val/eval splits",
    _params,
    _dictionary,
    _source,
    _out,
)
def cmd_synthetic(args: argparse.Namespace) -> int:
    from .data.sources import write_synthetic

    params = _load_params(args)
    source = _named(params.data.synthetic, args.source, args.params, "data.synthetic")
    whole = params.charset == charsets.MODEL  # a dictionary no font covers: draw what they can
    summary = write_synthetic(
        args.source, source, params.site_chars(args.model), args.out, str(args.params), whole
    )
    print(f"synthetic@{args.source}: {summary.splits} -> {args.out}")
    if whole:
        print(
            f"synthetic@{args.source}: labels draw {len(summary.alphabet or '')} of the model's "
            f"{summary.allowed} characters (those every font of the style has a glyph for)"
        )
    return 0


@verb("folder", "check, split and copy one folder of your own labeled images",
      _params, _dictionary, _source, _out)  # fmt: skip
def cmd_folder(args: argparse.Namespace) -> int:
    from .data.sources import write_folder

    params = _load_params(args)
    source = _named(params.data.folders, args.source, args.params, "data.folders")
    # the contract as declared: contract.json's `input` and `scoring` are these very values
    # (source.probe copies them), and reading them here keeps a model file replaced in place
    # (a new contract.json, same params) from rerunning every folder scan
    contract = params.model
    allowed = params.site_chars(args.model)
    summary = write_folder(
        args.source,
        source,
        allowed,
        contract.scoring.normalize,
        args.out,
        str(args.params),
        spec=contract.input,
    )
    print(
        f"folder@{args.source}: {summary.splits} -> {args.out}; skipped "
        f"{len(summary.skipped)} unreadable, {len(summary.duplicates)} duplicate, "
        f"{len(summary.ignored)} unlabeled/other files"
    )
    for item in summary.skipped[:10]:
        print(f"  skipped {item['name']}: {item['code']} {item['detail']}", file=sys.stderr)
    return 0


@verb("preprocess", "measure every preprocessing candidate on every evaluation set",
      _params, _model, _data, _out)  # fmt: skip
def cmd_preprocess(args: argparse.Namespace) -> int:
    from .contract import read_contract
    from .measure.preprocess import run
    from .records import write_record

    params = _load_params(args)
    contract = read_contract(args.model)
    candidates = {n: params.preprocess_for(c) for n, c in params.preprocess.candidates.items()}
    candidates = {"contract": contract.input, **candidates}
    result = run(
        candidates, args.data, params.data.decision_sources(), args.model, params.preprocess.images,
        contract.scoring,
    )  # fmt: skip
    write_record(args.out, result)
    for name, row in result.candidates.items():
        acc = ", ".join(f"{s} {v.accuracy:.4f}" for s, v in row.sets.items())
        print(f"preprocess: {name}: {row.preprocess_ms} ms/image, accuracy {acc}")
    return 0


@verb("build", "apply a device class's passes to the source model",
      _params, _recipes, _target, _model, _data, _out)  # fmt: skip
def cmd_build(args: argparse.Namespace) -> int:
    from . import modelio
    from .build import run_passes, write_build
    from .decision_data import decision_context

    params, contract, recipe = _load_class(args)
    model = modelio.load(args.model / "model.onnx")
    context, sources = decision_context(
        model, args.data, params.data.decision_sources(), recipe,
        params.site_chars(args.model), contract.scoring, params.data.min_accuracy,
        str(args.params),
    )  # fmt: skip
    results = run_passes(model, recipe, context)
    write_build(args.out, recipe, results, args.target, sources, contract=contract)
    for r in results:
        print(
            f"build@{args.target}: {r.filename} {modelio.size_mb(r.model):.2f} MB "
            f"in {r.seconds:.1f}s, argmax agreement {r.divergence['argmax_agreement']:.4f}"
        )
    return 0


def _reference(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        type=Path,
        help="the baselines stage's reference.json: reuse its reference texts (else recomputed)",
    )


@verb("evaluate", "score the reference and every built model on every evaluation set",
      _params, _target, _model, _data, _build, _reference, _out)  # fmt: skip
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .build import read_build_contract, read_recipe
    from .data.dataset import read_sets
    from .evaluate import EvalSets, evaluate_build, reference_texts
    from .records import write_record

    params = _load_params(args)
    contract = read_build_contract(args.build)  # the source's input and scoring, as built
    recipe = read_recipe(args.build)
    sets = EvalSets(read_sets(args.data, params.data.sources(), "eval"))
    ref = None if args.reference is None else reference_texts(args.reference, sets, contract.input)
    result = evaluate_build(
        args.target, args.model, args.build, sets, recipe.preprocess, contract.input,
        contract.scoring, recipe.runtime, ref, params.evaluate.exact_check_images,
    )  # fmt: skip
    write_record(args.out, result)
    for s in result.sets:
        ref, fin = result.variants["reference"].sets[s], result.variants["final"].sets[s]
        print(
            f"evaluate@{args.target} {s}: reference {ref.accuracy:.4f}, final {fin.accuracy:.4f}"
            f" (agreement {fin.agreement:.4f})"
        )
    return 0


def _builds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--builds", type=Path, required=True, help="folder of every class's build")


@verb("bundle", "package a class's final model (and optional fallback) for apps",
      _params, _target, _model, _build, _builds, _eval, _data, _out)  # fmt: skip
def cmd_bundle(args: argparse.Namespace) -> int:
    from ocr_bundles_runtime.manifest import sizes_mb

    from .build import read_build_contract, read_recipe
    from .bundle import write_bundle

    params = _load_params(args)
    recipe = read_recipe(args.build)
    profiles = {p: _named(params.profiles, p, args.params, "profiles") for p in recipe.profiles}
    doc = write_bundle(
        args.target, args.build, args.builds, args.model, read_build_contract(args.build), recipe,
        args.eval, args.out, args.data, profiles,
    )  # fmt: skip
    sizes = sizes_mb(args.out, doc)
    fallback = doc["models"].get("fallback", {}).get("origin", "none")
    print(
        f"bundle@{args.target}: ships {sizes['ships_mb']} MB ({', '.join(doc['ships'])}), "
        f"optional {sizes['optional_mb']} MB (fallback: {fallback}) -> {args.out}"
    )
    return 0


def _recognize_args(p: argparse.ArgumentParser) -> None:
    from ocr_bundles_runtime.cli import add_recognize_args

    add_recognize_args(p)


@verb("recognize", "recognize images with a bundle: exit 0 ok, 3 bad image, 4 bad bundle, 1 bug",
      _recognize_args)  # fmt: skip
def cmd_recognize(args: argparse.Namespace) -> int:
    from ocr_bundles_runtime.cli import cmd_recognize as recognize

    return recognize(args)


def _sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the bundle folder to sign")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key, PEM")


def _schema_out(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, default=Path("runtime/manifest.schema.json"), help="schema file"
    )


@verb("manifest-schema", "write manifest.json's JSON Schema, generated from its typed record",
      _schema_out)  # fmt: skip
def cmd_manifest_schema(args: argparse.Namespace) -> int:
    from .manifest_schema import write_schema

    print(f"manifest-schema: {write_schema(args.out)}")
    return 0


@verb("sign", "sign a bundle's manifest with an Ed25519 private key (writes manifest.sig)",
      _sign_args)  # fmt: skip
def cmd_sign(args: argparse.Namespace) -> int:
    from ocr_bundles_runtime.manifest import find_bundle

    from .bundle import sign_bundle

    folder = find_bundle(args.bundle)
    try:
        key = args.key.read_bytes()
    except OSError as e:
        raise PipelineError(f"{args.key}: cannot read the signing key ({e.strerror})") from e
    sign_bundle(folder, key)
    print(f"sign: {folder / 'manifest.sig'}")
    return 0


@verb("baselines", "build naive_int8 and score the stock baselines on every evaluation set",
      _params, _model, _data, _out)  # fmt: skip
def cmd_baselines(args: argparse.Namespace) -> int:
    import json

    from .baselines import build_baselines
    from .contract import read_contract
    from .data.dataset import read_sets
    from .evaluate import EvalSets

    params = _load_params(args)
    _print_notes(args, params)
    sets = EvalSets(read_sets(args.data, params.data.sources(), "eval"))
    origin = json.loads((args.model / "source.json").read_text())
    record = build_baselines(
        args.model, origin, read_contract(args.model), sets, args.out, params.applicable_baselines()
    )
    for name, row in record.variants.items():
        acc = ", ".join(f"{s} {r.accuracy:.4f}" for s, r in row.sets.items())
        print(f"baselines: {name}: {acc}")
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the class's bundle folder")
    p.add_argument(
        "--reference", type=Path, required=True, help="the baselines stage's reference.json"
    )


@verb("verify", "run the class's bundle on every CPU profile it declares (emulated where needed)",
      _params, _target, _model, _data, _build, _verify_args, _out)  # fmt: skip
def cmd_verify(args: argparse.Namespace) -> int:
    from .build import decided_on, read_recipe
    from .contract import read_contract
    from .data.dataset import read_sets
    from .evaluate import EvalSets, reference_texts
    from .records import write_record
    from .verify import integer_model, verify_bundle

    params = _load_params(args)
    contract = read_contract(args.model)
    recipe = read_recipe(args.build)
    sets = EvalSets(read_sets(args.data, params.data.sources(), "eval"))
    record = verify_bundle(
        args.target, args.bundle, args.build, sets,
        reference_texts(args.reference, sets, contract.input),
        {p: _named(params.profiles, p, args.params, "profiles") for p in recipe.profiles},
        params.verify.images, contract.scoring,
        recipe.budgets.max_accuracy_drop_pts, decided_on(args.build), integer_model(args.build),
    )  # fmt: skip
    write_record(args.out, record)
    for name, run in record.profiles.items():
        shown = ", ".join(
            f"{s} {r.accuracy:.3f} (agree ref {r.agreement_reference:.3f}, "
            f"build {r.agreement_build:.3f})"
            for s, r in run.sets.items()
        )
        print(f"verify@{args.target} {name} ({run.how}): {shown or run.reason}")
    return 0


def _clients_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the class's bundle folder")


@verb("clients", "read evaluation images through the class's bundle with each reference client",
      _params, _target, _model, _data, _clients_args, _out)  # fmt: skip
def cmd_clients(args: argparse.Namespace) -> int:
    from .client_runs import client_record
    from .contract import read_contract
    from .data.dataset import read_sets
    from .evaluate import EvalSets
    from .records import write_record

    params = _load_params(args)
    sets = EvalSets(read_sets(args.data, params.data.sources(), "eval"))
    scoring = read_contract(args.model).scoring
    record = client_record(args.target, args.bundle, sets, params.verify.client_images, scoring)
    write_record(args.out, record)
    for name, client in record.clients.items():
        shown = ", ".join(
            f"{s} {r.accuracy:.3f} (agree python {r.agreement_python:.3f})"
            for s, r in client.sets.items()
        )
        check = {True: "passed", False: "FAILED", None: "-"}[client.conformance]
        print(f"clients@{args.target} {name} {client.runtime}: {shown or client.reason}; "
              f"conformance {check}")  # fmt: skip
    return 0


@verb("levers", "build and score variants of a class's pass options beside its shipped model",
      _params, _target, _model, _data, _build, _out)  # fmt: skip
def cmd_levers(args: argparse.Namespace) -> int:
    from .levers import measure_levers
    from .records import write_record

    _load_passes()
    params = _load_params(args)
    record = measure_levers(params, args.target, args.model, args.data, args.build,
                            str(args.params))  # fmt: skip
    write_record(args.out, record)
    for r in record.rows:
        sets = [(f"val {s}", x) for s, x in r.val.items()] + list(r.eval.items())
        agree = ", ".join(f"{s} {x.agreement:.3f}" for s, x in sets)
        print(f"levers@{args.target} {r.name}: {r.error or agree}")
    if not record.rows:
        print(f"levers@{args.target}: no variants (params.yaml levers.variants.{args.target})")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the class's bundle folder")
    p.add_argument("--baselines", type=Path, required=True, help="the baselines stage's folder")
    p.add_argument("--verify", type=Path, required=True, help="the class's verify/<C>.json")
    p.add_argument(
        "--clients", type=Path, required=True, help="the class's verify/clients/<C>.json"
    )


@verb("bench", "measure every variant of a class in fresh pinned processes, interleaved",
      _params, _target, _model, _data, _build, _eval, _bench_args, _out)  # fmt: skip
def cmd_bench(args: argparse.Namespace) -> int:
    from .build import read_recipe
    from .contract import read_contract
    from .measure.bench import run_bench
    from .measure.variants import BenchInputs
    from .records import write_record

    params = _load_params(args)
    inputs = BenchInputs(
        target=args.target,
        source=args.model,
        build=args.build,
        eval_json=args.eval,
        bundle=args.bundle,
        baselines=args.baselines,
        data=args.data,
        sets=params.data.sources(),
        verify=args.verify,
        clients=args.clients,
    )
    bench = params.bench_as_run()  # only the baselines that apply to model.source
    result = run_bench(inputs, read_recipe(args.build), read_contract(args.model), bench)
    write_record(args.out, result)
    print(f"bench@{args.target}: vs stock {result.ratios.model_dump() if result.ratios else None}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", type=Path, required=True, help="folder of metrics/<class>.json")
    p.add_argument("--builds", type=Path, required=True, help="folder of every class's build")
    p.add_argument("--plots", type=Path, required=True, help="where the pictures go")
    p.add_argument("--readme", type=Path, help="README whose summary markers get the table")


@verb("report", "write reports/*.md, the pictures and an offline HTML page; embed in README",
      _params, _report_args, _out)  # fmt: skip
def cmd_report(args: argparse.Namespace) -> int:
    from .report import embed_file, write_reports

    params = _load_params(args)
    _print_notes(args, params)
    notes = params.notes()
    text = write_reports(
        params.targets, args.metrics, args.builds, args.out, args.plots, notes,
        agreement_goal=params.levers.agreement_goal,
    )  # fmt: skip
    if args.readme:
        embed_file(args.readme, text)
    print(f"report: {len(params.targets)} classes -> {args.out}, pictures -> {args.plots}")
    return 0


def _served_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the served class's bundle")


@verb("serve-bench", "measure the escalation server against stock ddddocr served the same way",
      _params, _data, _served_bundle, _out)  # fmt: skip
def cmd_serve_bench(args: argparse.Namespace) -> int:
    from .data.dataset import interleave, read_sets
    from .measure.serve_bench import serve_bench, serve_table
    from .records import write_record

    params = _load_params(args)
    s = params.serve
    if s.target not in params.targets:
        raise RecipeError(
            str(args.params),
            "serve.target",
            f"'{s.target}' is not in targets {params.targets}; the server runs a built class's "
            "bundle",
        )
    sets = read_sets(args.data, params.data.sources(), "eval")
    images = interleave([[p for p, _ in items] for items in sets.values()])
    result = serve_bench(args.bundle, images, s.clients, s.requests, s.batching)
    write_record(args.out, result)
    print(serve_table(result))
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    from .serve.settings import HOST, PORT, Settings  # the defaults' one home; light to import

    p.add_argument("--bundle", type=Path, required=True, help="bundle folder to serve")
    p.add_argument("--host", default=HOST, help="address to listen on")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument(
        "--workers", type=int, default=Settings.workers, help="threads running the model"
    )
    p.add_argument(
        "--batch", type=int, default=Settings.batch, help="largest batch (batching models only)"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=Settings.batch_wait_ms,
        help="collect a batch this long",
    )
    p.add_argument(
        "--max-body-kb", type=int, default=Settings.max_body_kb, help="largest request body"
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=Settings.max_concurrency,
        help="requests in flight, max",
    )
    p.add_argument(
        "--no-batching", action="store_true", help="never batch, even when the model can"
    )


@verb("serve", "serve a bundle over HTTP for the runtime's escalations", _serve_args)
def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.command import cmd_serve as serve

    return serve(args)


def _named(table: dict, name: str, params_file: Path, field: str):
    if name not in table:
        raise RecipeError(str(params_file), field, f"has no '{name}'; it has {sorted(table)}")
    return table[name]


def _load_params(args: argparse.Namespace) -> Params:
    params = load_params(args.params)
    params.check_versions(str(args.params))
    return params


def _print_notes(args: argparse.Namespace, params: Params) -> None:
    """What params.yaml sets aside (stderr: stdout is the stage's report)."""
    for note in params.notes():
        print(f"note: {args.params}: {note}", file=sys.stderr)


def _load_class(args: argparse.Namespace) -> tuple[Params, Contract, Recipe]:
    """Params, the model's contract and the class's recipe, checked in that order: the cheap
    checks of what the user typed come before anything read from earlier stages."""
    from .contract import read_contract

    _load_passes()
    params = _load_params(args)
    pipeline = load_pipeline(args.pipeline)
    if args.target not in params.targets:
        raise RecipeError(
            str(args.params),
            "targets",
            f"'{args.target}' is not a target; targets: {params.targets}",
        )
    contract = read_contract(args.model)
    recipe = load_class(args.target, params, pipeline, args.configs, args.params, contract.input)
    return params, contract, recipe


def _load_passes() -> None:
    from . import passes  # noqa: F401 - registers every pass


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    for name, (_, help_, add) in VERBS.items():
        add(sub.add_parser(name, help=help_))
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return VERBS[args.verb][0](args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
