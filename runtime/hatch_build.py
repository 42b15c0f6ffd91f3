"""Wheel build hook: ship the package stages/runtime, which lives outside this folder.

In a repository checkout it is ../stages/runtime; in an sdist built from one it is
./stages/runtime (the sdist target force-includes it there). __pycache__ folders are skipped
by hatchling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = Path("stages", "runtime")


class RuntimePackage(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        for base in (root, root.parent):  # an unpacked sdist first, then a checkout
            source = base / PACKAGE
            if (source / "__init__.py").is_file():
                build_data["force_include"][str(source)] = PACKAGE.as_posix()
                return
        raise FileNotFoundError(
            f"{PACKAGE} is neither in {root} nor in {root.parent}: build this distribution "
            "from a checkout of the ocr-bundles repository (pip install ./runtime)"
        )
