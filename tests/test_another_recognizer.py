"""Another CTC recognizer with zero edits outside `model:` (issue 22): the shipped configs/*.yaml,
pipeline.yaml and dvc.yaml, and the shipped params.yaml with its `model:` block swapped for a
hand-made reader of another contract (3 channels, BTC, probabilities, weights in Constant nodes,
opset 17, a batch dimension), `charset: model`, a folder of images it reads, and only the sizes
scaled down so the whole `dvc repro` runs in the test. Every structural key of params.yaml
(targets, overrides, bench.baselines, profiles, preprocess candidates) stays as shipped, so an
edit any of them needs for another model fails this test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import readable
import yaml
from minirepo import BIN, copy_pipeline, dvc, git, init_and_commit, output

from ocr_bundles_runtime import Recognizer
from stages import modelio

pytestmark = [
    pytest.mark.dvc,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
    pytest.mark.skipif(not (BIN / "dvc").exists(), reason="needs dvc in the venv"),
]

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("stages", "runtime/ocr_bundles_runtime", "configs", "dvc.yaml", "pipeline.yaml",
           "pyproject.toml", ".dvcignore", ".gitignore", "machine.json", "clients/js")  # fmt: skip
README = "# another\n\n<!-- summary:start -->\n<!-- summary:end -->\n"
CLASSES = ("", "a", "b", "c", "d", "e", " ")  # blank first; a space class at line ends
READER = readable.Reader(
    CLASSES, layout="BTC", kind="probabilities", channels=3, constants=True, opset=17
)
FOLDER = "captchas/lines"
# sizes only: how many images, rounds and requests (the structure stays the shipped one)
SIZES: dict[str, Any] = {
    "preprocess": {"images": 4},
    "bench": {"repeats": 1, "warm_images": 2, "warmup": 1, "long_session": 4},
    "serve": {"clients": [1], "requests": 4},
    "verify": {"images": 2, "client_images": 2},
}


def the_model_block() -> dict[str, Any]:
    return {
        "source": "file",
        "path": "models/input/reader.onnx",
        "charset": {"source": "file", "path": "models/input/dict.txt", "prepend": [""]},
        "input": {"height": READER.height, "channels": 3, "interpolation": "bilinear"},
        "output": {"layout": "BTC", "blank": "first", "kind": "probabilities"},
        "scoring": {"strip": True},
    }


def params() -> dict[str, Any]:
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {**shipped, "model": the_model_block(), "charset": "model"}
    out["data"] = {
        "synthetic": {
            name: {**src, "eval": 8, **({} if src.get("eval_only") else {"calib": 4, "val": 8})}
            for name, src in shipped["data"]["synthetic"].items()
        },
        "folders": {"lines": {"path": FOLDER, "calib": 0.25, "val": 0.25}},
    }
    for key, sizes in SIZES.items():
        out[key] = {**shipped[key], **sizes}
    return out


def make_repo(dest: Path) -> Path:
    dest.mkdir(parents=True)
    copy_pipeline(dest, SHIPPED)
    (dest / "README.md").write_text(README)
    (dest / "params.yaml").write_text(yaml.safe_dump(params(), sort_keys=False, allow_unicode=True))
    modelio.save(READER.model(), dest / "models" / "input" / "reader.onnx")
    readable.write_dictionary(dest / "models" / "input" / "dict.txt", CLASSES[1:])
    folder = dest / FOLDER
    folder.mkdir(parents=True)
    for i, text in enumerate(readable.texts("abcde", 40, seed=3)):
        (folder / f"{text}_{i:03d}.png").write_bytes(READER.image(f" {text} "))
    # copy_pipeline linked the emulators `make test` installed: verify runs the ARM profiles
    init_and_commit(dest, "another recognizer")
    return dest


def test_the_shipped_configs_build_another_recognizer_by_its_model_block_alone(tmp_path: Path):
    for name in ("configs", "pipeline.yaml"):  # the test runs what ships, byte for byte
        assert not (ROOT / name).is_symlink()
    repo = make_repo(tmp_path / "repo")
    p = dvc(repo, "repro", timeout=1200)
    text = output(p)

    # decisions on what the model reads: the synthetic captchas are noise to a line reader
    for target in ("high", "mid", "low"):
        build = json.loads((repo / "build" / target / "model" / "build.json").read_text())
        used = {s: u["used"] for s, u in build["sources"].items()}
        assert used == {"clean": False, "hard": False, "lines": True}, (target, build["sources"])
        done = {
            s["pass"]: s["report"].get(s["pass"], {}).get("nothing_to_do") for s in build["stages"]
        }
        assert done["lift_constants"] is None, build["stages"]  # its weights were Constants
        assert done["prune_charset"], build["stages"]  # charset 'model': nothing to prune
        if "convert_opset" in done:  # opset 17 is never lowered to low's 13
            assert done["convert_opset"], build["stages"]
    assert "left out of the decisions" in text

    for target in ("high", "mid", "low"):
        evaluation = json.loads((repo / "build" / target / "eval.json").read_text())
        final = evaluation["variants"]["final"]["sets"]
        assert final["lines"]["accuracy"] == 1.0, (target, final)
        result = Recognizer.from_bundle(repo / "bundles" / target).predict(READER.image(" dace "))
        assert (result.text, result.status) == ("dace", "ok"), (target, result)
        assert (repo / "metrics" / f"{target}.json").is_file()

    summary = (repo / "reports" / "summary.md").read_text()
    assert "stock_default" in summary  # skipped for a file source, and said so
    assert "5 of 6 allowed (`abcde`)" in summary  # what the synthetic labels cover
    clean = json.loads((repo / "data" / "clean" / "summary.json").read_text())
    assert (clean["alphabet"], clean["allowed"]) == ("abcde", 6)  # the space is no glyph
    git(repo, "add", "-A")
    assert dvc(repo, "status", "--json").stdout.strip() in ("{}", "")
