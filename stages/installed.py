"""Where the git-ignored tool installs are: the emulators (`make emulators`: `.emu/`) and the
JavaScript clients' packages (`make js`: `clients/js/node_modules`).

They live in the checkout. A queued or temporary DVC experiment (`dvc exp run --queue`,
`--temp`) runs the stages in a copy of the repository under `.dvc/tmp/exps` that holds no
ignored file, and DVC sets `DVC_ROOT` in each stage's environment to the repository the
experiment came from: its installs serve the copy, as its `.venv` does. They are tools, not
inputs: pinned by emulators.sh and package-lock.json, and each record names what ran.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMULATORS = ".emu"
CLIENT_PACKAGES = "clients/js/node_modules"


def installed(relative: str, root: Path | None = None) -> Path:
    """`relative` under `root` (this checkout), else under DVC's `DVC_ROOT` where only that
    one has it; the path under `root` when neither has it, so that a message about it names
    this checkout."""
    here = (root or ROOT) / relative
    origin = os.environ.get("DVC_ROOT")
    if here.exists() or not origin:
        return here
    there = Path(origin) / relative
    return there if there.exists() else here


def emulators() -> Path:
    """What `make emulators` installed (stages/profiles/emulators.sh)."""
    return installed(EMULATORS)


def client_dir() -> Path:
    """The JavaScript clients' folder whose packages `make js` installed: this checkout's, or
    the experiment's origin's (Node resolves a client's packages from beside its script)."""
    return installed(CLIENT_PACKAGES).parent
