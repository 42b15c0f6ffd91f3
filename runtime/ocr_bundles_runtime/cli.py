"""`python -m ocr_bundles_runtime --bundle bundles/low IMG... [--json]` (also `python -m stages
recognize ...`): the runtime from a shell, with nothing but the runtime installed.

Prints `<path>\\t<text>` per image (a third column names a non-ok status or an error code), or
with --json one object per line: the full Result, or the ImageError's code, retryable flag and
advice. `--check` first runs the bundle's conformance vectors and stops unless they pass.
Exit codes: 0 all ok, 3 some image was bad input, 4 bundle invalid or unloadable, 5 the
bundle fails its conformance vectors here, 1 internal error (logged with its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import IMAGE_ERRORS, BundleError, ImageError

if TYPE_CHECKING:
    from .recognizer import Result

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_IMAGE, EXIT_BAD_BUNDLE, EXIT_UNHEALTHY = 0, 1, 3, 4, 5


def add_recognize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        type=Path,
        required=True,
        help="bundle folder (bundles/low), or a folder holding it as bundle/",
    )
    p.add_argument("images", nargs="*", type=Path, help="image files to recognize")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the bundle's conformance vectors first; exit 5 unless every one passes",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument(
        "--providers", help="comma-separated execution providers, overriding the manifest's"
    )
    p.add_argument(
        "--format",
        choices=("ort", "onnx"),
        help="model format to load (default: the bundle's first)",
    )
    p.add_argument(
        "--public-key", type=Path, help="require manifest.sig to verify with this PEM key"
    )
    p.add_argument(
        "--server", type=_url, help="escalation URL for unsure images (overrides the manifest)"
    )
    p.add_argument("--server-timeout", type=_seconds, help="seconds to wait for the server")


def _url(value: str) -> str:
    from .escalate import check_url

    try:
        return check_url(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 600], got {value!r}")
    return seconds


def cmd_recognize(args: argparse.Namespace) -> int:
    if not args.images and not args.check:
        print("error: give image files to recognize, or --check", file=sys.stderr)
        return 2
    try:
        return _recognize(args)
    except BundleError as e:
        print(f"error: bundle: {e}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    except Exception:
        log.exception("internal error while recognizing; please report it with this traceback")
        return EXIT_INTERNAL


def _recognize(args: argparse.Namespace) -> int:
    from .recognizer import Recognizer  # onnxruntime loads only when a verb runs

    providers = args.providers.split(",") if args.providers else None
    rec = Recognizer.from_bundle(
        args.bundle,
        providers=providers,
        model_format=args.format,
        public_key=args.public_key,
        escalation_url=args.server,
        escalation_timeout_s=args.server_timeout,
    )
    if args.check and not _report_check(rec, args.json):
        return EXIT_UNHEALTHY
    code = EXIT_OK
    for path in args.images:
        try:
            result = rec.predict(path, return_probs=args.json)
        except ImageError as e:
            code = EXIT_BAD_IMAGE
            _emit_error(path, args.json, e)
            continue
        _emit_result(path, args.json, result)
    return code


def _report_check(rec: Any, as_json: bool) -> bool:
    report = rec.check()
    if as_json:
        print(json.dumps({"check": report.as_dict()}, ensure_ascii=False), flush=True)
    else:
        for v in report.vectors:
            diff = "-" if v.max_value_diff is None else f"{v.max_value_diff:.3g}"
            print(f"check\t{v.image}\t{'ok' if v.ok else 'FAIL'}\t{v.text}\tmax diff {diff}")
    verdict = "healthy" if report.ok else f"NOT healthy: {report.reason}"
    print(f"check: {rec.spec.where} on this runtime: {verdict}", file=sys.stderr)
    return report.ok


def _emit_result(path: Path, as_json: bool, result: Result) -> None:
    if as_json:
        print(
            json.dumps({"path": str(path), "ok": True, **result.as_dict()}, ensure_ascii=False),
            flush=True,
        )
        return
    flag = "" if result.status == "ok" else f"\t{result.status}"
    print(f"{path}\t{result.text}{flag}", flush=True)


def _emit_error(path: Path, as_json: bool, error: ImageError) -> None:
    print(f"error: {error}", file=sys.stderr)
    if as_json:
        print(
            json.dumps({"path": str(path), **_error_record(error)}, ensure_ascii=False), flush=True
        )
        return
    print(f"{path}\t\t{error.code}", flush=True)


def _error_record(e: ImageError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "code": e.code,
            "detail": e.detail,
            "retryable": e.retryable,
            "advice": IMAGE_ERRORS[e.code],
        },
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(
        prog="python -m ocr_bundles_runtime", description=__doc__.splitlines()[0]
    )
    add_recognize_args(ap)
    return cmd_recognize(ap.parse_args(argv))
