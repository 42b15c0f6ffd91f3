"""`python -m stages recognize --bundle build/low IMG... [--json]`: the runtime from a shell.

Prints `<path>\\t<text>` per image (a third column names a non-ok status or an error code), or
with --json one object per line: the full Result, or the ImageError's code, retryable flag and
advice. Exit codes: 0 all ok, 3 some image was bad input, 4 bundle invalid or unloadable,
1 internal error (logged with its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .preprocess import IMAGE_ERRORS, ImageError
from .runtime import BundleError, Recognizer, Result

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_IMAGE, EXIT_BAD_BUNDLE = 0, 1, 3, 4


def add_recognize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle", type=Path, required=True, help="bundle folder, or its class folder (build/low)"
    )
    p.add_argument("images", nargs="+", type=Path, help="image files to recognize")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument(
        "--providers", help="comma-separated execution providers, overriding the manifest's"
    )
    p.add_argument("--ort", action="store_true", help="load the .ort models instead of .onnx")


def cmd_recognize(args: argparse.Namespace) -> int:
    try:
        return _recognize(args)
    except BundleError as e:
        print(f"error: bundle: {e}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    except Exception:
        log.exception("internal error while recognizing; please report it with this traceback")
        return EXIT_INTERNAL


def _recognize(args: argparse.Namespace) -> int:
    providers = args.providers.split(",") if args.providers else None
    rec = Recognizer.from_bundle(args.bundle, providers=providers, prefer_ort=args.ort)
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
