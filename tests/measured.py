"""A whole tiny project measured by the real stages: source, two data sources, two classes
(float and int8 with quantize_to_tolerance), evaluation, bundles, baselines, the bench with
tiny settings and the preprocess candidates. Shared by test_bench.py and test_report.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import builders

from ocr_bundles_runtime.preprocess import Preprocess
from stages.baselines import build_baselines
from stages.build import read_recipe
from stages.client_runs import client_record
from stages.data.dataset import read_sets
from stages.evaluate import EvalSets, reference_texts
from stages.measure.bench import run_bench
from stages.measure.preprocess import run as run_preprocess
from stages.measure.variants import BenchInputs
from stages.params import BenchParams
from stages.profiles.host import host_arch
from stages.profiles.profile import CpuProfile
from stages.records import write_record
from stages.verify import verify_bundle

SOURCES = ("clean", "hard")
CLASSES: dict[str, dict[str, Any]] = {
    "high": {
        "passes": [{"fix_output_shape": {}}, {"prune_charset": {"chars": "abcde"}}],
        "bundle": {"formats": ["onnx"], "fallback": "none"},
        "budgets": {"max_accuracy_drop_pts": 0.0},
    },
    "low": {
        "passes": [
            {"fix_output_shape": {}},
            {"prune_charset": {"chars": "abcde"}},
            {
                "quantize_to_tolerance": {
                    "max_accuracy_drop_pts": 100,
                    "min_agreement": 0.0,
                    "calibration_images": 4,
                    "sensitivity_images": 2,
                    "always_rank": True,  # the report's sensitivity table has rows to show
                }
            },
        ],
        "bundle": {"formats": ["ort"], "fallback": "float", "confidence_threshold": 0.9},
        "budgets": {"max_size_mb": 1.0, "max_cpu_ratio": 5.0, "max_attributable_rss_ratio": 0.0001},
    },
}
# this machine (no flags asked: it always matches) and a CPU QEMU cannot emulate
PROFILES = {
    "here": CpuProfile(arch=host_arch(), note="the machine running the tests"),  # type: ignore[arg-type]
    "far": CpuProfile(arch="aarch64", requires=["sve2"], note="an ARM CPU with no QEMU model"),
}
PARAMS = BenchParams(
    repeats=2,
    warm_images=6,
    warmup=1,
    long_session=30,
    baselines=["stock", "naive_int8"],
    floor_sizes=[32],
)


def measure_project(root: Path) -> dict[str, Any]:
    builders.write_source(root)
    builders.write_data(root, SOURCES)
    for target, fields in CLASSES.items():
        builders.build_class(
            root,
            target,
            fields["passes"],
            SOURCES,
            **{k: v for k, v in fields.items() if k != "passes"},
        )
        builders.evaluate_class(root, target, SOURCES)
        builders.bundle_class(root, target)
    source = root / "models" / "source"
    contract = builders.contract(root)
    origin = json.loads((source / "source.json").read_text())
    sets = EvalSets(read_sets(root / "data", list(SOURCES), "eval"))
    build_baselines(source, origin, contract, sets, root / "baselines", list(PARAMS.baselines))
    metrics = root / "metrics"
    reference = reference_texts(root / "baselines" / "reference.json", sets, contract.input)
    for target in CLASSES:
        build = root / "build" / target / "model"
        bundle = root / "bundles" / target
        verify = verify_bundle(
            target, bundle, build, sets, reference, PROFILES, 5, contract.scoring, 0.5
        )
        write_record(root / "verify" / f"{target}.json", verify)
        clients = client_record(target, bundle, sets, 3, contract.scoring)
        write_record(root / "verify" / "clients" / f"{target}.json", clients)
        inputs = BenchInputs(
            target=target,
            source=source,
            build=root / "build" / target / "model",
            eval_json=root / "build" / target / "eval.json",
            bundle=root / "bundles" / target,
            baselines=root / "baselines",
            data=root / "data",
            sets=list(SOURCES),
            verify=root / "verify" / f"{target}.json",
            clients=root / "verify" / "clients" / f"{target}.json",
        )
        record = run_bench(inputs, read_recipe(inputs.build), contract, PARAMS)
        write_record(metrics / f"{target}.json", record)
    candidates = {"contract": contract.input, "area": Preprocess(height=8, interpolation="area")}
    pre = run_preprocess(candidates, root / "data", list(SOURCES), source, 5, contract.scoring)
    write_record(metrics / "preprocess.json", pre)
    return {"root": root, "metrics": metrics, "builds": root / "build", "targets": list(CLASSES)}
