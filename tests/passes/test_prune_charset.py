import importlib.resources
import json

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from stages import modelio, registry
from stages.errors import PassError
from stages.passes.prune_charset import PruneCharsetOptions, prune_charset

CTX = registry.PassContext()
RTOL = 1e-5  # the kept logits are the same dot products, only fewer of them


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _assert_contract(original, pruned, keep, xs, run=tiny.run) -> None:
    """Pruned logits == original logits on columns `keep`; argmax maps through `keep`."""
    for x in xs:
        full, small = run(original, x), run(pruned, x)
        restricted = full[..., keep]
        assert small.shape == restricted.shape
        np.testing.assert_allclose(small, restricted, rtol=RTOL, atol=1e-6)
        mapped = np.asarray(keep)[small.argmax(-1)]
        assert np.array_equal(mapped, np.asarray(keep)[restricted.argmax(-1)])


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_keeps_blank_and_allowed_classes(head):
    model = tiny.tiny_ctc(classes=7, head=head, wrong_output_shape=False)
    before = model.SerializeToString()
    out = prune_charset(model, PruneCharsetOptions(chars="eb"), CTX)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    assert tiny.op_counts(out) == tiny.op_counts(model)
    inits = _inits(out)
    assert inits["head_w"].shape == ((3, 12) if head == "gemm" else (12, 3))
    assert inits["head_b"].shape == (3,)
    assert inits["out_shape"].tolist() == [-1, 1, 3]
    spec = modelio.spec(out)
    assert (spec.charset, spec.blank, spec.layout) == (["", "b", "e"], 0, "TBC")
    assert "ocr.pruned_missing" not in _meta(out)
    _assert_contract(model, out, [0, 2, 5], tiny.inputs(6))


def test_uses_context_allowed_chars_and_declared_dims():
    model = tiny.tiny_ctc(classes=7, wrong_output_shape=False)
    ctx = registry.PassContext(allowed_chars="fa")
    out = prune_charset(model, PruneCharsetOptions(), ctx)
    assert modelio.spec(out).charset == ["", "a", "f"]
    dims = out.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 3]
    _assert_contract(model, out, [0, 1, 6], tiny.inputs(3))


def _concat_target(model: onnx.ModelProto, count_from: str) -> onnx.ModelProto:
    """The Reshape target built as Concat([-1, 1], count), the count in an initializer or a
    Constant node (ddddocr assembles its target with a Concat like this)."""
    graph = model.graph
    keep = [t for t in graph.initializer if t.name != "out_shape"]
    del graph.initializer[:]
    graph.initializer.extend([*keep, numpy_helper.from_array(np.array([-1, 1]), "lead")])
    count = numpy_helper.from_array(np.array([7]), "count")
    if count_from == "initializer":
        graph.initializer.append(count)
    else:
        graph.node.insert(0, helper.make_node("Constant", [], ["count"], value=count))
    concat = helper.make_node("Concat", ["lead", "count"], ["out_shape"], axis=0)
    graph.node.insert(len(graph.node) - 1, concat)
    return model


@pytest.mark.parametrize("count_from", ["initializer", "constant"])
def test_class_count_inside_concat_target_is_updated(count_from):
    model = _concat_target(tiny.tiny_ctc(classes=7, wrong_output_shape=False), count_from)
    onnx.checker.check_model(model, full_check=True)
    out = prune_charset(model, PruneCharsetOptions(chars="cd"), CTX)
    onnx.checker.check_model(out, full_check=True)
    assert tiny.op_counts(out) == tiny.op_counts(model)
    if count_from == "initializer":
        assert _inits(out)["count"].tolist() == [3]
    else:
        const = next(n for n in out.graph.node if n.op_type == "Constant")
        assert numpy_helper.to_array(const.attribute[0].t).tolist() == [3]
    _assert_contract(model, out, [0, 3, 4], tiny.inputs(3))


def test_blank_not_first_is_moved_to_zero():
    base = tiny.tiny_ctc(classes=7)
    charset = ["a", "b", "c", "", "d", "e", "f"]
    model = modelio.with_spec(base, charset, "TBC", 3)
    out = prune_charset(model, PruneCharsetOptions(chars="fa"), CTX)
    spec = modelio.spec(out)
    assert (spec.charset, spec.blank) == (["", "a", "f"], 0)
    _assert_contract(model, out, [3, 0, 6], tiny.inputs(3))


def test_other_ocr_metadata_survives():
    model = tiny.tiny_ctc()
    model.metadata_props.add(key="ocr.source", value="tiny")
    model.metadata_props.add(key="producer", value="test")
    meta = _meta(prune_charset(model, PruneCharsetOptions(chars="ab"), CTX))
    assert (meta["ocr.source"], meta["producer"]) == ("tiny", "test")


def test_missing_chars_are_an_error_listing_them():
    with pytest.raises(PassError, match=r"\['Z', '9'\].*on_missing"):
        prune_charset(tiny.tiny_ctc(), PruneCharsetOptions(chars="aZb9"), CTX)


def test_skip_drops_missing_and_records_them():
    model = tiny.tiny_ctc(classes=7)
    out = prune_charset(model, PruneCharsetOptions(chars="aZb9", on_missing="skip"), CTX)
    assert modelio.spec(out).charset == ["", "a", "b"]
    assert json.loads(_meta(out)["ocr.pruned_missing"]) == ["Z", "9"]
    _assert_contract(model, out, [0, 1, 2], tiny.inputs(2))


@pytest.mark.parametrize(
    ("chars", "ctx_chars", "match"),
    [
        (None, "", "no characters to keep"),
        ("abcdef", "", "cover all 7 classes"),
    ],
)
def test_nothing_to_keep_or_prune(chars, ctx_chars, match):
    ctx = registry.PassContext(allowed_chars=ctx_chars)
    with pytest.raises(PassError, match=match):
        prune_charset(tiny.tiny_ctc(classes=7), PruneCharsetOptions(chars=chars), ctx)


def test_all_skipped_is_an_error():
    opts = PruneCharsetOptions(chars="XYZ", on_missing="skip")
    with pytest.raises(PassError, match="nothing would be kept"):
        prune_charset(tiny.tiny_ctc(), opts, CTX)


def test_charset_size_mismatch_is_an_error():
    model = modelio.with_spec(tiny.tiny_ctc(classes=7), ["", "a", "b"], "TBC", 0)
    with pytest.raises(PassError, match=r"7 classes.*3 entries"):
        prune_charset(model, PruneCharsetOptions(chars="a"), CTX)


def test_shared_constant_is_copied_not_changed():
    # an extra output reads the head bias: slicing it in place would change that output
    model = tiny.tiny_ctc(classes=7, wrong_output_shape=False)
    model.graph.node.append(helper.make_node("Identity", ["head_b"], ["bias_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("bias_copy", TensorProto.FLOAT, [7]))
    out = prune_charset(model, PruneCharsetOptions(chars="ab"), CTX)
    onnx.checker.check_model(out, full_check=True)
    inits = _inits(out)
    assert inits["head_b"].shape == (7,)
    assert inits["head_b_pruned"].shape == (3,)


def test_model_without_classifier_is_an_error():
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="sig")],
        "no_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, 3])],
    )
    model = modelio.with_spec(helper.make_model(graph), ["", "a", "b"], "TBC", 0)
    with pytest.raises(PassError, match=r"no classifier found.*Sigmoid 'sig'"):
        prune_charset(model, PruneCharsetOptions(chars="a"), CTX)


def test_model_without_metadata_is_an_error():
    model = tiny.tiny_ctc()
    del model.metadata_props[:]
    with pytest.raises(PassError, match="ocr"):
        prune_charset(model, PruneCharsetOptions(chars="a"), CTX)


@pytest.mark.integration
def test_ddddocr_common_model_shrinks():
    import ddddocr.charsets
    import onnxruntime as ort

    path = importlib.resources.files("ddddocr") / "common.onnx"
    charset = list(ddddocr.charsets.CHARSET_BETA)
    model = modelio.with_spec(onnx.load(str(path)), charset, "TBC", 0)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = prune_charset(model, PruneCharsetOptions(chars=chars), CTX)
    assert 53 < modelio.size_mb(model) < 55
    assert 20 < modelio.size_mb(out) < 22
    keep = [0, *sorted(charset.index(c) for c in chars)]
    assert modelio.spec(out).charset == [charset[i] for i in keep]
    sessions = {}

    def run(m, x):
        key = id(m)
        if key not in sessions:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sessions[key] = ort.InferenceSession(m.SerializeToString(), so)
        sess = sessions[key]
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    rng = np.random.default_rng(0)
    xs = [rng.random((1, 1, 64, w), dtype=np.float32) for w in (96, 137, 200)]
    _assert_contract(model, out, keep, xs, run=run)
