"""The reference clients (clients/js) run a bundle as an app in another language would: the
client decodes each image file itself, feeds the pixels, decodes CTC and checks the bundle's
conformance vectors. The clients stage (`clients@<C>`) runs them on this machine: Node runs
this CPU's own int8 kernels, so unlike verify it reruns on another x86 kind. `make js` installs
them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ocr_bundles_runtime.manifest import BundleSpec, find_bundle, parse_bundle

from .errors import PipelineError
from .evaluate import EvalSets
from .installed import client_dir
from .profiles.host import host_facts
from .records import ClientRun, ClientSet, ClientsRecord
from .scoring import Scoring, agreement, score

BACKENDS = {"node": "onnxruntime-node", "wasm": "onnxruntime-web"}  # our name -> npm package
CLI_BACKEND = {"node": "node", "wasm": "web"}
TIMEOUT_S = 1800


def unavailable() -> str | None:
    """Why the clients cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    modules = client_dir() / "node_modules"
    if not modules.is_dir():
        return f"{modules} is missing: run make js"
    return None


def runtime_name(backend: str) -> str:
    package = BACKENDS[backend]
    meta = client_dir() / "node_modules" / package / "package.json"
    version = json.loads(meta.read_text())["version"] if meta.is_file() else "?"
    return f"{package} {version}"


def _node(bundle: Path, backend: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = ["node", str(client_dir() / "cli.mjs"), "--bundle", str(bundle)]
    cmd += ["--backend", CLI_BACKEND[backend], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def read_texts(bundle: Path, backend: str, images: list[Path]) -> list[str | None]:
    """The client's text per image, in order (None where it could not read the image)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("".join(f"{p.resolve()}\n" for p in images))
        listing.flush()
        proc = _node(bundle, backend, ["read", "--list", listing.name])
    if proc.returncode not in (0, 1):
        raise PipelineError(f"the {backend} client failed on {bundle}: {proc.stderr.strip()}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    texts = {str(Path(r["image"]).resolve()): r.get("text") for r in rows}
    return [texts.get(str(p.resolve())) for p in images]


def check(bundle: Path, backend: str) -> tuple[bool, str | None]:
    """(healthy, the first failing vector's line) from the client's `check`."""
    proc = _node(bundle, backend, ["check"])
    if proc.returncode == 2:
        raise PipelineError(f"the {backend} client refused {bundle}: {proc.stderr.strip()}")
    failed = [
        row
        for row in (json.loads(line) for line in proc.stdout.splitlines() if line.strip())
        if not row.get("ok", False)
    ]
    return proc.returncode == 0, (json.dumps(failed[0]) if failed else None)


def clients_on(spec: BundleSpec, sets: EvalSets, n: int, scoring: Scoring) -> dict[str, ClientRun]:
    """The first `n` images of every set through each reference client, text for text against
    the Python runtime's primary read of the same files, and the conformance check."""
    why = unavailable()
    if why is None and spec.feed != "pixels":
        why = "the bundle feeds a host-preprocessed tensor (bundle.preprocess: host)"
    if why is not None:
        return {b: ClientRun(runtime=BACKENDS[b], reason=why) for b in BACKENDS}
    from ocr_bundles_runtime import Recognizer

    rec = Recognizer.from_bundle(spec.root)
    images = {s: ps[:n] for s, ps in sets.images.items()}
    python = {s: [rec.first_read(p)[0] for p in ps] for s, ps in images.items()}
    out = {}
    for backend in BACKENDS:
        ok, failure = check(spec.root, backend)
        run = ClientRun(runtime=runtime_name(backend), conformance=ok,
                        conformance_failure=failure)  # fmt: skip
        for s, ps in images.items():
            got = [t if t is not None else "\0unread" for t in read_texts(spec.root, backend, ps)]
            run.sets[s] = ClientSet(
                images=len(ps),
                accuracy=round(score(got, sets.labels[s][:n], scoring)["accuracy"], 5),
                agreement_python=agreement(got, python[s], scoring),
            )
        out[backend] = run
    return out


def client_record(
    target: str, bundle: Path, sets: EvalSets, n: int, scoring: Scoring
) -> ClientsRecord:
    """The clients stage: the class's bundle through every reference client on this machine."""
    spec = parse_bundle(find_bundle(bundle))
    return ClientsRecord(
        target=target,
        machine=host_facts(),
        images_per_set=n if spec.feed == "pixels" else None,
        clients=clients_on(spec, sets, n, scoring),
    )
