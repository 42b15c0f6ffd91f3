"""The verify stage on the tiny measured project: the shipped model on each declared profile,
scored against the float reference and against the build's reading (its final model, exact
int8 kernels); carried into metrics and report. The clients stage's record beside it."""

from __future__ import annotations

import json

from stages.profiles.host import host_arch, host_cpu, host_flags
from stages.records import BenchRecord, ClientsRecord, VerifyRecord, read_record
from stages.report import runs_on_section
from stages.scoring import Scoring


def test_this_machine_as_a_profile_reads_what_the_build_read(measured: dict):
    """The native run of the shipped .ort against the build's model.onnx with exact kernels:
    the same texts, outputs within float noise. (On an AVX2 machine a .ort cannot take the
    exact kernels and may saturate: that is what the column is there to show, so there the
    test asks only that the comparison ran.)"""
    rec = read_record(measured["root"] / "verify" / "low.json", VerifyRecord)
    assert rec.model_file == "model.ort"  # low ships .ort: what its app runs
    assert rec.images_per_set == 5 and rec.resolution_pts == 20.0
    assert "exact int8 kernels" in rec.build_reading
    here = rec.profiles["here"]
    assert here.how == "native" and set(here.sets) == {"clean", "hard"}
    exact_here = host_arch() != "x86_64" or {"avx512_vnni", "avx_vnni"} & host_flags()
    for s in here.sets.values():
        assert s.images == 5
        if exact_here:
            assert s.agreement_build == 1.0 and s.max_abs_diff < 1e-4, s
        assert 0.0 <= s.agreement_build <= 1.0
        assert s.accuracy_drop_pts == round(100 * (s.reference_accuracy - s.accuracy), 3)
    assert here.within_budget == all(s.accuracy_drop_pts <= 0.5 for s in here.sets.values())


def test_a_profile_this_machine_cannot_run_is_recorded_with_why(measured: dict):
    rec = read_record(measured["root"] / "verify" / "low.json", VerifyRecord)
    far = rec.profiles["far"]
    assert far.how == "unavailable" and far.sets == {} and far.within_budget is None
    assert "QEMU cannot emulate" in (far.reason or "")


def test_reference_agreement_is_against_the_float_reference_texts(measured: dict):
    """high ships the pruned float model: it reads what the reference reads."""
    rec = read_record(measured["root"] / "verify" / "high.json", VerifyRecord)
    assert rec.model_file == "model.onnx"
    for s in rec.profiles["here"].sets.values():
        assert s.agreement_reference == 1.0 and s.accuracy == s.reference_accuracy


def test_metrics_carry_every_profile_and_the_report_shows_them(measured: dict):
    verify = json.loads((measured["root"] / "verify" / "low.json").read_text())
    bench = read_record(measured["metrics"] / "low.json", BenchRecord)
    assert {n: p.model_dump(mode="json") for n, p in bench.profiles.items()} == verify["profiles"]
    text = runs_on_section(bench)
    assert "| here | native |" in text and "| far | not run: needs an aarch64 CPU" in text
    assert "first 5 images" in text and "one image = 20 points" in text
    assert "- `far`: an ARM CPU with no QEMU model" in text


def test_a_profile_is_judged_on_the_sets_the_build_decided_on():
    from stages.records import ProfileSet
    from stages.verify import within_budget

    def one(drop: float) -> ProfileSet:
        return ProfileSet(
            images=20, accuracy=0.5, reference_accuracy=0.5 + drop / 100, accuracy_drop_pts=drop,
            agreement_reference=0.9, agreement_build=1.0, max_abs_diff=0.1,
        )  # fmt: skip

    sets = {"clean": one(5.0), "lines": one(0.0)}  # clean: read at 4 %, left out of decisions
    assert within_budget(sets, 0.5, None) is False
    assert within_budget(sets, 0.5, ["lines"]) is True
    assert within_budget(sets, None, ["lines"]) is None


def test_a_float_model_is_not_emulated_and_this_machines_run_stands_for_it(
    measured: dict, monkeypatch
):
    """Float kernels agree across ISAs to ~1e-5, so an emulated profile of a float bundle reads
    this machine's outputs (how 'float', with why) instead of hours under QEMU; an int8 model
    on the same profile would be emulated (the fake emulator here would then fail)."""
    import pytest

    from stages import verify
    from stages.data.dataset import read_sets
    from stages.errors import PipelineError
    from stages.evaluate import EvalSets
    from stages.profiles.profile import CpuProfile, Placement

    monkeypatch.setattr(
        verify, "place", lambda p, emu: Placement("emulated", ("/nonexistent/qemu-x86_64", "-cpu"))
    )
    sets = EvalSets(read_sets(measured["root"] / "data", ["clean"], "eval"))
    ref = {"clean": ["abc"] * len(sets.labels["clean"])}
    profiles = {"emu": CpuProfile(arch="x86_64", qemu_cpu="Haswell", note="emulated x86")}
    bundle = measured["root"] / "bundles" / "high"
    build = measured["root"] / "build" / "high" / "model"
    rec = verify.verify_bundle("high", bundle, build, sets, ref, profiles, 3, Scoring(), 0.5,
                               integer=False)  # fmt: skip
    run = rec.profiles["emu"]
    assert run.how == "float" and "not emulated" in (run.reason or "")
    assert run.sets["clean"].agreement_build == 1.0 and run.sets["clean"].max_abs_diff < 1e-4
    with pytest.raises((PipelineError, OSError)):
        verify.verify_bundle("high", bundle, build, sets, ref, profiles, 3, Scoring(), 0.5)


def test_a_float_model_reads_this_machines_run_even_where_no_emulator_could(
    monkeypatch,
):
    """A float bundle's profile that QEMU cannot emulate (AVX-512) is FLOAT too: whether the
    build machine has AVX-512 then changes nothing in the record."""
    from stages import verify
    from stages.profiles.profile import CpuProfile, Placement

    monkeypatch.setattr(verify, "place", lambda p, emu: Placement("unavailable", reason="no QEMU"))
    profiles = {"vnni": CpuProfile(arch="x86_64", requires=["avx512_vnni"], note="n")}
    assert verify.placements(profiles, integer=False)["vnni"].how == "float"
    assert verify.placements(profiles, integer=True)["vnni"].how == "unavailable"


def test_the_clients_record_names_its_machine_and_reaches_the_metrics(measured: dict):
    clients = read_record(measured["root"] / "verify" / "clients" / "low.json", ClientsRecord)
    assert clients.target == "low" and clients.machine["cpu"] == host_cpu()
    bench = read_record(measured["metrics"] / "low.json", BenchRecord)
    assert bench.clients == clients.clients
    verify = read_record(measured["root"] / "verify" / "low.json", VerifyRecord)
    assert bench.profiles_machine == verify.build_machine


def test_a_record_kept_from_another_x86_machine_says_whose_runs_it_holds(measured: dict):
    """A build on another x86 kind keeps verify's record (same `numerics`); its native run was
    that machine's, and the report must not call it this machine's."""
    from stages.report.summary import profiles_table

    bench = read_record(measured["metrics"] / "low.json", BenchRecord)
    assert "| here | native |" in runs_on_section(bench)
    other = bench.model_copy(update={"profiles_machine": {"cpu": "other cpu", "isa": ["avx2"]}})
    text = runs_on_section(other)
    assert "| here | native on other cpu |" in text
    assert "Run on other cpu (avx2: without VNNI)" in text
    assert "measured on this machine." not in text  # no profile is this machine's here
    assert "| native on other cpu |" in profiles_table({"low": other})
