import importlib.resources
import json

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from stages import modelio, registry
from stages.build import pop_reports
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


def test_nothing_to_keep_is_an_error():
    ctx = registry.PassContext(allowed_chars="")
    with pytest.raises(PassError, match="no characters to keep"):
        prune_charset(tiny.tiny_ctc(classes=7), PruneCharsetOptions(), ctx)


@pytest.mark.parametrize(
    ("options", "ctx_chars", "skipped"),
    [
        (PruneCharsetOptions(chars="abcdef"), "", ""),
        (PruneCharsetOptions(), "fedcba", ""),  # the site's charset is the model's whole one
        (
            PruneCharsetOptions(chars="abcZdef", on_missing="skip"),
            "",
            " (skipped, not in the model's charset: ['Z'])",
        ),
    ],
    ids=["chars", "context", "skipped"],
)
def test_covering_every_class_returns_the_input_recorded(options, ctx_chars, skipped):
    model = tiny.tiny_ctc(classes=7)
    before = model.SerializeToString()
    out = prune_charset(model, options, registry.PassContext(allowed_chars=ctx_chars))
    assert out is not model
    assert model.SerializeToString() == before
    popped, report = pop_reports(out)
    assert popped.SerializeToString() == before  # no row, dim or charset entry touched
    reason = "the allowed characters cover all 7 classes: nothing to prune" + skipped
    assert report == {"prune_charset": {"nothing_to_do": reason}}


def test_covering_every_class_but_whitespace_still_prunes():
    # keep_whitespace off: the space class is not allowed, so there is something to prune
    chars = ["", "a", "b", " ", "c", "d", "e"]
    model = modelio.with_spec(tiny.tiny_ctc(classes=7), chars, "TBC", 0)
    out = prune_charset(model, PruneCharsetOptions(chars="abcde", keep_whitespace=False), CTX)
    assert pop_reports(out)[1] == {}
    assert modelio.spec(out).charset == ["", "a", "b", "c", "d", "e"]


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
    # the site's characters, plus ddddocr's space and U+3000 (keep_whitespace)
    keep = [0, *sorted(charset.index(c) for c in chars + " \u3000")]
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


# ---------------------------------------------------------------------------- normalized heads


def _normalized(model: onnx.ModelProto, op: str, axis: int | None = None, at: str = "logits"):
    """`model` with a `op` (Softmax/LogSoftmax) over tensor `at`: at the output by default,
    where the model then outputs the normalized scores under the name 'scores'."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    attrs = {} if axis is None else {"axis": axis}
    if at == graph.output[0].name:
        graph.node.append(helper.make_node(op, [at], ["scores"], name="norm", **attrs))
        graph.output[0].name = "scores"
    else:
        consumers = [n for n in graph.node if at in n.input]
        for node in consumers:
            node.input[list(node.input).index(at)] = f"{at}_norm"
        producer = next(i for i, n in enumerate(graph.node) if at in n.output)
        graph.node.insert(
            producer + 1, helper.make_node(op, [at], [f"{at}_norm"], name="norm", **attrs)
        )
    spec = modelio.spec(model)
    kind = "probabilities" if op == "Softmax" else "logits"
    return modelio.with_spec(out, spec.charset, spec.layout, spec.blank, kind)


def _renormalized(op: str):
    """What the pruned output must be: the reference's kept columns, normalized again."""

    def expect(full: np.ndarray, keep: list[int]) -> np.ndarray:
        kept = full[..., keep].astype(np.float64)
        if op == "Softmax":
            return kept / kept.sum(axis=-1, keepdims=True)
        return kept - np.log(np.exp(kept).sum(axis=-1, keepdims=True))

    return expect


def _assert_renormalized(original, pruned, keep, op: str) -> None:
    expect = _renormalized(op)
    for x in tiny.inputs(4, widths=(16, 24, 50)):
        want, got = expect(tiny.run(original, x), keep), tiny.run(pruned, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
        if op == "Softmax":
            np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_trailing_normalization_is_renormalized_over_the_kept_classes(op):
    model = _normalized(tiny.tiny_ctc(classes=7, wrong_output_shape=False), op)
    onnx.checker.check_model(model, full_check=True)
    out = prune_charset(model, PruneCharsetOptions(chars="eb"), CTX)
    onnx.checker.check_model(out, full_check=True)
    assert tiny.op_counts(out) == tiny.op_counts(model)
    assert tiny.op_counts(out)[op] == 1
    inits = _inits(out)
    assert (inits["head_w"].shape, inits["head_b"].shape) == ((3, 12), (3,))
    dims = out.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 3]
    spec = modelio.spec(out)
    assert (spec.charset, spec.kind) == (["", "b", "e"], modelio.spec(model).kind)
    assert spec.kind == ("probabilities" if op == "Softmax" else "logits")
    _assert_renormalized(model, out, [0, 2, 5], op)


def test_softmax_over_the_2d_scores_before_the_reshape():
    # axis 1 of the Gemm's [T, C] output: the class axis, known from shape inference
    model = _normalized(tiny.tiny_ctc(classes=7), "Softmax", axis=1, at="logits2d")
    out = prune_charset(model, PruneCharsetOptions(chars="ac"), CTX)
    assert _inits(out)["out_shape"].tolist() == [-1, 1, 3]
    _assert_renormalized(model, out, [0, 1, 3], "Softmax")


def test_opset12_softmax_default_axis_on_the_tbc_output():
    # before opset 13 Softmax flattens from axis 1: [T, 1*C], the batch axis has size 1
    model = tiny.tiny_ctc(classes=7, wrong_output_shape=False)
    squeeze = next(n for n in model.graph.node if n.op_type == "Squeeze")
    squeeze.CopyFrom(helper.make_node("Squeeze", ["c_silu"], ["sq"], "squeeze", axes=[2]))
    model.opset_import[0].version = 12
    model = _normalized(model, "Softmax")
    onnx.checker.check_model(model, full_check=True)
    out = prune_charset(model, PruneCharsetOptions(chars="fa"), CTX)
    _assert_renormalized(model, out, [0, 1, 6], "Softmax")


@pytest.mark.parametrize(("axis", "at"), [(0, "logits"), (1, "logits"), (0, "logits2d")])
def test_softmax_over_another_axis_is_refused(axis, at):
    model = _normalized(tiny.tiny_ctc(classes=7), "Softmax", axis=axis, at=at)
    with pytest.raises(PassError, match=rf"Softmax 'norm' normalizes over axis {axis}.*cannot be"):
        prune_charset(model, PruneCharsetOptions(chars="ab"), CTX)


# ---------------------------------------------------------------------------- 1x1 Conv head


def _conv_head_ctc(classes: int = 7, features: int = 6, softmax: int | None = None):
    """input [1,1,8,W] -> Conv(8x2, stride 8x2) -> Relu -> 1x1 Conv(W[C,K,1,1], b[C])
    -> [1,C,1,T] -> Squeeze(2) -> [1,C,T] -> Transpose(2,0,1) -> [T,1,C] logits.
    With `softmax`, a Softmax over that axis of the [1,C,T] tensor before the Transpose."""
    rng = np.random.default_rng(4)
    f32 = np.float32
    inits = [
        numpy_helper.from_array(
            rng.normal(0, 0.5, (features, 1, tiny.HEIGHT, 2)).astype(f32), "w1"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, features).astype(f32), "b1"),
        numpy_helper.from_array(rng.normal(0, 1, (classes, features, 1, 1)).astype(f32), "head_w"),
        numpy_helper.from_array(rng.normal(0, 0.2, classes).astype(f32), "head_b"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Conv", ["input1", "w1", "b1"], ["f"], strides=[tiny.HEIGHT, 2]),
        helper.make_node("Relu", ["f"], ["fr"]),
        helper.make_node("Conv", ["fr", "head_w", "head_b"], ["c"], name="head"),
        helper.make_node("Squeeze", ["c", "axes"], ["sq"]),
    ]
    if softmax is not None:
        nodes.append(helper.make_node("Softmax", ["sq"], ["sm"], name="norm", axis=softmax))
    last = "sq" if softmax is None else "sm"
    nodes.append(helper.make_node("Transpose", [last], ["logits"], perm=[2, 0, 1]))
    graph = helper.make_graph(
        nodes,
        "conv_head",
        [helper.make_tensor_value_info("input1", TensorProto.FLOAT, [1, 1, tiny.HEIGHT, "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", 1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    charset = [""] + [chr(ord("a") + i) for i in range(classes - 1)]
    kind = "logits" if softmax is None else "probabilities"
    return modelio.with_spec(model, charset, "TBC", 0, kind)


def test_1x1_conv_head_is_pruned_on_its_output_channels():
    model = _conv_head_ctc()
    onnx.checker.check_model(model, full_check=True)
    out = prune_charset(model, PruneCharsetOptions(chars="bf"), CTX)
    onnx.checker.check_model(out, full_check=True)
    assert (
        tiny.op_counts(out)
        == tiny.op_counts(model)
        == {
            "Conv": 2,
            "Relu": 1,
            "Squeeze": 1,
            "Transpose": 1,
        }
    )
    inits = _inits(out)
    assert (inits["head_w"].shape, inits["head_b"].shape) == ((3, 6, 1, 1), (3,))
    assert inits["w1"].shape == (6, 1, tiny.HEIGHT, 2)  # the feature Conv is not the head
    assert [d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim][1:] == [1, 3]
    assert modelio.spec(out).charset == ["", "b", "f"]
    _assert_contract(model, out, [0, 2, 6], tiny.inputs(4))


def test_softmax_before_a_transpose_is_traced_to_the_class_axis():
    # [1, C, T]: axis 1 holds the classes, the Transpose moves them last
    model = _conv_head_ctc(softmax=1)
    out = prune_charset(model, PruneCharsetOptions(chars="bf"), CTX)
    assert modelio.spec(out).kind == "probabilities"
    _assert_renormalized(model, out, [0, 2, 6], "Softmax")
    # axis -1 of [1, C, T] is time: refused, though -1 is the output's class axis
    with pytest.raises(PassError, match=r"normalizes over axis -1.*classes are on axis -2"):
        prune_charset(_conv_head_ctc(softmax=-1), PruneCharsetOptions(chars="bf"), CTX)


def test_grouped_or_wider_conv_is_not_a_classifier():
    model = _conv_head_ctc()
    head = next(n for n in model.graph.node if n.name == "head")
    head.attribute.append(helper.make_attribute("group", 2))
    model.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(np.ones((7, 3, 1, 1), np.float32), "head_w")
    )
    with pytest.raises(PassError, match=r"reached Conv 'head'.*drop the pass"):
        prune_charset(model, PruneCharsetOptions(chars="bf"), CTX)


# ---------------------------------------------------------------------------- Constant weights


def _weights_in_constants(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """`model` with initializers `names` held by Constant nodes, as some exporters write."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    moved = [t for t in graph.initializer if t.name in names]
    for tensor in moved:
        graph.initializer.remove(tensor)
        const = helper.make_node("Constant", [], [tensor.name], value=tensor)
        graph.node.insert(0, const)
    return out


@pytest.mark.parametrize(
    ("head", "held"), [("gemm", ["head_w"]), ("matmul", ["head_w"]), ("matmul", ["head_b"])]
)
def test_constant_weights_ask_for_lift_constants(head, held):
    from stages.passes.lift_constants import LiftConstantsOptions, lift_constants

    model = _weights_in_constants(tiny.tiny_ctc(classes=7, head=head), held)
    onnx.checker.check_model(modelio.checkable(model))
    with pytest.raises(PassError, match="weights are Constant nodes: add lift_constants"):
        prune_charset(model, PruneCharsetOptions(chars="ab"), CTX)
    lifted = lift_constants(model, LiftConstantsOptions(), CTX)
    out = prune_charset(lifted, PruneCharsetOptions(chars="ab"), CTX)
    assert "Constant" not in tiny.op_counts(out)
    _assert_contract(model, out, [0, 1, 2], tiny.inputs(3))


def _with_space(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny model with its last class relabelled as a space."""
    spec = modelio.spec(model)
    return modelio.with_spec(model, [*spec.charset[:-1], " "], spec.layout, spec.blank)


@pytest.mark.parametrize("keep", [True, False])
def test_whitespace_classes_are_kept_unless_asked_not_to(keep):
    model = _with_space(tiny.tiny_ctc(wrong_output_shape=False))
    out = prune_charset(model, PruneCharsetOptions(chars="ab", keep_whitespace=keep), CTX)
    expected = ["", "a", "b", " "] if keep else ["", "a", "b"]
    assert modelio.spec(out).charset == expected
    x = tiny.inputs(1)[0]
    cols = [0, 1, 2, 6] if keep else [0, 1, 2]
    np.testing.assert_allclose(
        tiny.run(out, x), tiny.run(model, x)[..., cols], rtol=1e-5, atol=1e-6
    )
