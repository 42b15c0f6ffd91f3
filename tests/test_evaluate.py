"""The evaluation stage on tiny models: every stage model on every evaluation set, records
written by the real writers and read back through their type."""

from __future__ import annotations

import builders
import tiny

from ocr_bundles_runtime.decode import decode
from ocr_bundles_runtime.session import Runtime
from stages import evaluate, modelio
from stages.records import EvalRecord, read_record


def test_predict_decodes_each_input_with_the_models_contract(tmp_path):
    source = builders.write_source(tmp_path)
    model = modelio.load(source / "model.onnx")
    xs = tiny.inputs(5)
    preds = evaluate.predict(source / "model.onnx", xs, Runtime())
    ctc = modelio.spec(model)
    assert preds == [decode(tiny.run(model, x), ctc.charset).text for x in xs]


def test_predict_gives_the_same_texts_on_any_number_of_cores(tmp_path, monkeypatch):
    source = builders.write_source(tmp_path)
    xs = tiny.inputs(40)
    texts = {}
    for cores in (1, 2, 5):
        monkeypatch.setattr(evaluate, "usable_cores", lambda n=cores: n)
        texts[cores] = evaluate.predict(source / "model.onnx", xs, evaluate.eval_runtime(Runtime()))
    assert texts[1] == texts[2] == texts[5]
    assert len(set(texts[1])) > 1  # a constant answer would make the order check vacuous


def test_evaluate_build_scores_every_variant_on_every_set(tmp_path):
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    builders.build_class(tmp_path, "tiny", [{"fix_output_shape": {}}, {"quantize_dynamic": {}}])
    record = read_record(builders.evaluate_class(tmp_path, "tiny"), EvalRecord)
    assert record.target == "tiny"
    assert record.sets == {"clean": 10, "hard": 10}
    assert list(record.variants) == [
        "reference",
        "01-fix_output_shape",
        "02-quantize_dynamic",
        "final",
    ]
    for name, v in record.variants.items():
        assert set(v.sets) == {"clean", "hard"}
        for r in v.sets.values():
            assert r.images == 10 and 0.0 <= r.accuracy <= 1.0
            assert (r.agreement is None) == (name == "reference")
    # an exact pass and the same preprocessing: identical predictions
    fixed = record.variants["01-fix_output_shape"]
    assert all(r.agreement == 1.0 for r in fixed.sets.values())
    # each stage against its input; final against the float model it quantizes (the input
    # of the first lossy pass, here stage 01)
    assert {r.change.against for r in fixed.sets.values()} == {"reference"}
    assert all(r.change.agreement == 1.0 for r in fixed.sets.values())
    quantized = record.variants["02-quantize_dynamic"]
    assert {r.change.against for r in quantized.sets.values()} == {"01-fix_output_shape"}
    for s, r in quantized.sets.items():  # the flips account for the accuracy change exactly
        moved = round((r.accuracy - fixed.sets[s].accuracy) * r.images)
        assert r.change.wrong_to_right - r.change.right_to_wrong == moved
    final = record.variants["final"]
    assert final.sets == quantized.sets
    assert final.size_mb == round(modelio.size_mb(tmp_path / "build/tiny/model/model.onnx"), 3)


def test_an_exact_stage_that_reads_its_inputs_texts_on_a_head_takes_them(
    tmp_path, capsys, monkeypatch
):
    """exact_check: the exact stages read the first images of each set only, and where their
    texts equal their input's, the record is the full evaluation's, saying whose texts."""
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    passes = [
        {"fix_output_shape": {}},
        {"convert_opset": {"opset": 17}},
        {"prune_charset": {"chars": "abc"}},  # exact on the classes it keeps: read in full
        {"quantize_dynamic": {}},
    ]
    builders.build_class(tmp_path, "tiny", passes)
    full = read_record(builders.evaluate_class(tmp_path, "tiny"), EvalRecord)
    heads = []
    real = evaluate._exact_stage
    monkeypatch.setattr(
        evaluate, "_exact_stage", lambda model, *a: heads.append(model.stem) or real(model, *a)
    )
    checked = read_record(builders.evaluate_class(tmp_path, "tiny", exact_check=3), EvalRecord)
    assert "same texts as reference on the first 3" in capsys.readouterr().out
    assert heads == ["01-fix_output_shape", "02-convert_opset"]
    for name, v in checked.variants.items():
        assert v.sets == full.variants[name].sets
    assert (
        checked.variants["01-fix_output_shape"].texts_of,
        checked.variants["01-fix_output_shape"].checked_images,
    ) == ("reference", 3)
    assert checked.variants["02-convert_opset"].texts_of == "01-fix_output_shape"
    assert checked.variants["03-prune_charset"].texts_of is None
    assert checked.variants["04-quantize_dynamic"].texts_of is None  # lossy: read in full
    assert full.variants["01-fix_output_shape"].texts_of is None  # 0: every image
    # the bench labels those stages' accuracy with where it comes from
    from stages.measure.accuracy import accuracy_sources

    assert accuracy_sources(checked) == {
        "01-fix_output_shape": "reference's texts: the same on the first 3 of each set",
        "02-convert_opset": "01-fix_output_shape's texts: the same on the first 3 of each set",
    }
    assert accuracy_sources(full) == {}


def test_an_exact_stage_whose_head_reads_otherwise_reads_every_image(tmp_path, monkeypatch):
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    builders.build_class(tmp_path, "tiny", [{"fix_output_shape": {}}])
    real = evaluate.predict
    read = []

    def changed(model, xs, rt, bar=None):  # the stage model reads one text differently
        texts = real(model, xs, rt, bar)
        if "01-fix_output_shape" in str(model):
            read.append(len(xs))
            texts[0] += "x"
        return texts

    monkeypatch.setattr(evaluate, "predict", changed)
    record = read_record(builders.evaluate_class(tmp_path, "tiny", exact_check=3), EvalRecord)
    stage = record.variants["01-fix_output_shape"]
    assert stage.texts_of is None and stage.checked_images is None
    assert read == [3, 3, 10, 10]  # the heads of both sets, then both sets in full
    assert all(r.agreement == 0.9 for r in stage.sets.values())


def test_evaluation_is_deterministic(tmp_path):
    """No timings in eval.json: an unchanged rebuild reruns nothing downstream."""
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    builders.build_class(tmp_path, "tiny", [{"fix_output_shape": {}}])
    first = builders.evaluate_class(tmp_path, "tiny").read_bytes()
    assert builders.evaluate_class(tmp_path, "tiny").read_bytes() == first
    assert b"_ms" not in first


def _reference_file(root):
    """baselines/reference.json as the real baselines stage writes it."""
    from stages.baselines import REFERENCE_FILE, build_baselines
    from stages.contract import read_contract
    from stages.data.dataset import read_sets

    src = root / "models" / "source"
    sets = evaluate.EvalSets(read_sets(root / "data", ["clean", "hard"], "eval"))
    build_baselines(src, {"file": "tiny.onnx"}, read_contract(src), sets, root / "baselines", [])
    return root / "baselines" / REFERENCE_FILE, sets


def test_reference_texts_from_baselines_give_the_same_record(tmp_path):
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    builders.build_class(tmp_path, "tiny", [{"quantize_dynamic": {}}])
    computed = read_record(builders.evaluate_class(tmp_path, "tiny"), EvalRecord)
    path, sets = _reference_file(tmp_path)
    from stages.contract import read_contract

    contract = read_contract(tmp_path / "models" / "source")
    texts = evaluate.reference_texts(path, sets, contract.input)
    assert {s: len(t) for s, t in texts.items()} == {"clean": 10, "hard": 10}
    src, build = tmp_path / "models" / "source", tmp_path / "build" / "tiny" / "model"
    rec = builders.read_recipe(build)
    reused = evaluate.evaluate_build(
        "tiny", src, build, sets, rec.preprocess, contract.input, contract.scoring,
        rec.runtime, texts,
    )  # fmt: skip
    assert reused == computed


def test_stale_reference_texts_are_refused_with_the_file(tmp_path):
    import dataclasses

    import pytest

    from stages.contract import read_contract
    from stages.errors import DataError

    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    path, sets = _reference_file(tmp_path)
    spec = read_contract(tmp_path / "models" / "source").input
    other = dataclasses.replace(spec, height=spec.height + 1)
    with pytest.raises(DataError, match=r"reference\.json.*rerun the baselines stage"):
        evaluate.reference_texts(path, sets, other)
    fewer = evaluate.EvalSets(
        {s: list(zip(p[:-1], sets.labels[s][:-1], strict=True)) for s, p in sets.images.items()}
    )
    with pytest.raises(DataError, match="other evaluation images"):
        evaluate.reference_texts(path, fewer, spec)


def test_a_stage_with_its_inputs_bytes_is_not_read_again(tmp_path, monkeypatch):
    """lift_constants does nothing to the tiny model (its weights are initializers): same bytes
    as stage 01, so its texts are stage 01's without a second read, and its scores equal."""
    builders.write_source(tmp_path)
    builders.write_data(tmp_path)
    passes = [{"fix_output_shape": {}}, {"lift_constants": {}}, {"quantize_dynamic": {}}]
    build = builders.build_class(tmp_path, "tiny", passes)
    stages = build / "stages"
    same = (stages / "01-fix_output_shape.onnx").read_bytes()
    assert (stages / "02-lift_constants.onnx").read_bytes() == same
    read: list[str] = []
    predict = evaluate.EvalSets.predict

    def counting(self, model, spec, rt, label):
        read.append(model.name)
        return predict(self, model, spec, rt, label)

    monkeypatch.setattr(evaluate.EvalSets, "predict", counting)
    record = read_record(builders.evaluate_class(tmp_path, "tiny"), EvalRecord)
    assert "02-lift_constants.onnx" not in read
    assert "01-fix_output_shape.onnx" in read and "03-quantize_dynamic.onnx" in read
    first, second = record.variants["01-fix_output_shape"], record.variants["02-lift_constants"]
    for s, r in second.sets.items():
        assert r.model_dump(exclude={"change"}) == first.sets[s].model_dump(exclude={"change"})
        assert r.change.against == "01-fix_output_shape" and r.change.agreement == 1.0
