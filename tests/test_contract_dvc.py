"""A user's own CTC recognizer through DVC, by configuration alone: a temp git + DVC copy of the
pipeline whose params.yaml `model:` names a hand-made reader under models/input/ and whose only
data is a folder of images it can read. `dvc repro bundle@reader` must give a bundle that reads
the string drawn in an image; replacing the model file in place must rerun the model stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import readable
import yaml
from minirepo import BIN, commit_all, dvc, init_and_commit, output, ran_stages
from readable import Reader

from ocr_bundles_runtime import Recognizer
from stages import modelio

pytestmark = [
    pytest.mark.dvc,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
    pytest.mark.skipif(not (BIN / "dvc").exists(), reason="needs dvc in the venv"),
]

ROOT = Path(__file__).resolve().parents[1]
# machine.json: its `numerics` is a param of every stage that computes int8 numbers
COPIED = ("stages", "runtime/ocr_bundles_runtime", "dvc.yaml", "pipeline.yaml", "pyproject.toml",
          ".dvcignore", ".gitignore", "machine.json")  # fmt: skip
TARGET = "reader"
CLASSES = ("", "a", "b", "c", "d", "e", " ")  # blank first; the model draws a space at line ends
FOLDER = "captchas/readable"
CHAIN = {"model", "folder@readable", f"build@{TARGET}", f"evaluate@{TARGET}", f"bundle@{TARGET}"}
# bundle@<class> depends on the whole build/ folder (for `bundle.fallback: class:<name>`), which
# holds the baselines stage's output too, so DVC may run baselines before it (no baselines here)
MAY_RUN = {"baselines"}


def params() -> dict[str, Any]:
    real = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {
        "targets": [TARGET],
        "model": {
            "source": "file",
            "path": "models/input/reader.onnx",
            "charset": {"source": "file", "path": "models/input/dict.txt", "prepend": [""]},
            "input": {"height": 16, "channels": 1, "interpolation": "bilinear"},
            "output": {"layout": "BTC", "blank": "first", "kind": "logits"},
            "scoring": {"strip": True},
        },
        # the space class the reader emits at line ends must survive prune_charset: pruned
        # away, the nearest kept class ('d') takes its place and every text is wrong
        "charset": "chars:abcd ",
        "data": {
            "synthetic": {},
            "folders": {"readable": {"path": FOLDER, "calib": 0.3, "val": 0.3}},
        },
        "preprocess": {"images": 4, "candidates": {}},
        "evaluate": {"exact_check_images": 2},  # dvc reads every params block its stages name
        "bench": {"repeats": 1, "warm_images": 2, "warmup": 0, "long_session": 0, "baselines": []},
        "serve": {"target": TARGET, "clients": [1], "requests": 4, "batching": [False]},
        "versions": real["versions"],
        "profiles": real["profiles"],  # the bundle stage's dvc params name the table
        "overrides": {TARGET: {}},
    }


RECIPE = {
    "description": "a hand-made reader declared in params.yaml",
    "passes": [
        {"prune_charset": {}},  # to params' charset: 'e' goes
        {"quantize_dynamic": {"op_types": ["MatMul", "Gemm"]}},
    ],
    "runtime": {"intra_op_threads": 1},
    "equivalence": {"images": 4},
    "bundle": {"formats": ["onnx"], "fallback": "none"},
}


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def make_repo(dest: Path, reader: Reader) -> Path:
    dest.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    write_yaml(dest / "params.yaml", params())
    write_yaml(dest / "configs" / f"{TARGET}.yaml", RECIPE)
    modelio.save(reader.model(), dest / "models" / "input" / "reader.onnx")
    readable.write_dictionary(dest / "models" / "input" / "dict.txt", CLASSES[1:])
    folder = dest / FOLDER
    folder.mkdir(parents=True)
    for i, text in enumerate(readable.texts("abcd", 24, seed=5)):
        (folder / f"{text}_{i:03d}.png").write_bytes(reader.image(f" {text} "))
    init_and_commit(dest, "a hand-made reader")
    return dest


def repro(repo: Path) -> tuple[set[str], str]:
    p = dvc(repo, "repro", f"bundle@{TARGET}")
    return ran_stages(p), output(p)


def status(repo: Path) -> dict[str, Any]:
    """`dvc status` of the bundle's chain (bench and report are never run here)."""
    p = dvc(repo, "status", "--json", "--with-deps", f"bundle@{TARGET}")
    return json.loads(p.stdout or "{}")


def reads(repo: Path, reader: Reader, text: str) -> None:
    result = Recognizer.from_bundle(repo / "bundles" / TARGET).predict(reader.image(f" {text} "))
    # the reader emits its space class at both ends; the runtime strips it, as scoring does
    assert (result.text, result.status) == (text, "ok"), result
    assert result.confidence > 0.99, result


def test_own_model_by_params_alone_and_replacing_it_reruns_the_model_stage(tmp_path: Path):
    t0 = time.perf_counter()
    reader = Reader(CLASSES)
    repo = make_repo(tmp_path / "repo", reader)

    ran, out = repro(repo)
    assert CHAIN <= ran <= CHAIN | MAY_RUN, out
    contract = json.loads((repo / "models/source/contract.json").read_text())
    out = contract["output"]
    assert (out["classes"], out["layout"], out["blank"]) == (7, "BTC", 0)
    assert contract["batch"] is True
    charset = json.loads((repo / "bundles" / TARGET / "charset.json").read_text())
    assert charset == ["", "a", "b", "c", "d", " "]  # pruned to params' charset
    evaluation = json.loads((repo / "build" / TARGET / "eval.json").read_text())
    assert evaluation["variants"]["final"]["sets"]["readable"]["accuracy"] == 1.0
    reads(repo, reader, "dacb")
    commit_all(repo, "built")
    assert status(repo) == {}

    # the same contract, another file written over the old one in place: a Gemm head that
    # only runs batch 1
    other = reader.with_(head="gemm")
    modelio.save(other.model(), repo / "models" / "input" / "reader.onnx")
    changed = status(repo)
    assert "model" in changed, changed
    assert {"changed deps": {"models/input": "modified"}} in changed["model"], changed
    assert not any(s.startswith("folder@") for s in changed), changed

    before = json.loads((repo / "models/source/source.json").read_text())["sha256"]
    ran, out = repro(repo)
    assert CHAIN - {"folder@readable"} <= ran <= (CHAIN | MAY_RUN) - {"folder@readable"}, out
    after = json.loads((repo / "models/source/source.json").read_text())["sha256"]
    assert after != before
    assert json.loads((repo / "models/source/contract.json").read_text())["batch"] is False
    reads(repo, other, "abba")
    assert status(repo) == {}
    seconds = time.perf_counter() - t0
    assert seconds < 120, f"the DVC round trip took {seconds:.0f}s"
