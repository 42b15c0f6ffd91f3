"""Quantization-aware fine-tuning of a static QDQ model, distilling the float model it came from.

The scale search (_scale_search) is gradient-free; this is the gradient version the literature
means: the QDQ graph runs in torch, each activation QuantizeLinear->DequantizeLinear pair as a
fake quantizer with a learned step (LSQ: Esser et al., 2020) and its zero point kept, each int8
weight as a fake quantizer of a learned float weight (started from the float model's) whose step
per channel follows its largest magnitude, as quantize_static sets it, each int32 bias as a
learned float bias. Rounding passes gradients straight through. The loss is the KL divergence
of the model's per-frame class distribution from the float model's on the calibration tensors
(distillation: no labels), in a seeded order, with Adam and cosine-decayed learning rates.
Everything else in the graph (the dynamic group, still float at this point) is constant.

Export writes the learned steps, the weights requantized to their new steps and the biases to
input step x weight step back into the same graph: same nodes, same kernels, same size.

Float64, so that the build CPU's rounding (1e-16 relative, against 1e-7 in float32) would have
to land a learned value within that distance of an int8 rounding boundary to change a byte.
torch is imported only when the option is on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import modelio
from ..errors import PassError
from ..records import QatRecord

# ops whose first axis is the batch: run batched; the graph's tail (reshapes, the LSTM) runs
# one image at a time, because exported recognizers often fix their batch to 1 there
_BATCHED = {"Conv", "Sigmoid", "Mul", "Add", "Relu", "QuantizeLinear", "DequantizeLinear"}
SUPPORTED = sorted(
    _BATCHED
    | {"Transpose", "Reshape", "Shape", "Gather", "Squeeze", "Unsqueeze", "Concat", "Gemm"}
    | {"MatMul"}
    | {"LSTM", "Softmax"}
)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def check_supported(where: str, model: onnx.ModelProto) -> None:
    """A clear error before any training: which ops the torch graph cannot run."""
    missing = sorted({n.op_type for n in model.graph.node} - set(SUPPORTED))
    if missing:
        raise PassError(
            where,
            f"qat_images: the fine-tune runs the graph in torch and does not know the op(s) "
            f"{missing} (it knows {SUPPORTED}); set qat_images: 0 for this model",
        )


def finetune(
    model: onnx.ModelProto,
    float_model: onnx.ModelProto,
    xs: list[np.ndarray],
    held_out: list[np.ndarray],
    teacher: tuple[list[np.ndarray], list[np.ndarray]],
    options: Any,
    progress: str = "",
) -> tuple[onnx.ModelProto, QatRecord]:
    """`model` (static QDQ) fine-tuned on `xs` against `teacher`: the float model's outputs on
    `xs` and on `held_out`, which a search tuning several models computes once;
    `options` carries qat_epochs, qat_batch, qat_lr_weights, qat_lr_scales."""
    import torch  # only builds that fine-tune pay its import

    torch.manual_seed(0)
    with _one_thread(torch):
        kind = {p.key: p.value for p in model.metadata_props}.get("ocr.kind", "logits")
        graph = _Graph(model, float_model, kind == "probabilities")
        train, check = _tensors(torch, xs, teacher[0]), _tensors(torch, held_out, teacher[1])
        before = graph.kl(train), graph.kl(check)
        _fit(torch, graph, train, options, progress)
        after = graph.kl(train), graph.kl(check)
        return graph.export(model), QatRecord(
            images=len(xs),
            epochs=options.qat_epochs,
            held_out_images=len(held_out),
            kl_before=_sig(before[0]),
            kl_after=_sig(after[0]),
            held_out_kl_before=_sig(before[1]),
            held_out_kl_after=_sig(after[1]),
        )


@contextlib.contextmanager
def _one_thread(torch) -> Iterator[None]:
    """One summation order whatever the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(torch, graph: _Graph, train: list, options: Any, progress: str) -> None:
    """Adam over the steps (their own rate) and the weights and biases, in a seeded order,
    both rates decaying on one cosine."""
    opt = torch.optim.Adam(
        [
            {"params": list(graph.steps.values()), "lr": options.qat_lr_scales},
            {
                "params": [*graph.weights.values(), *graph.biases.values()],
                "lr": options.qat_lr_weights,
            },
        ]
    )
    batches = math.ceil(len(train) / options.qat_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, options.qat_epochs * batches))
    order = np.random.default_rng(0)
    for epoch in range(options.qat_epochs):
        perm = order.permutation(len(train))
        for b in range(batches):
            idx = perm[b * options.qat_batch : (b + 1) * options.qat_batch]
            loss = graph.loss([train[i] for i in idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            print(f"{progress}: epoch {epoch + 1}/{options.qat_epochs}", flush=True)


def _sig(v: float) -> float:
    return float(f"{v:.3g}")


def _tensors(torch, xs: list[np.ndarray], ys: list[np.ndarray]) -> list[tuple[Any, Any]]:
    return [
        (torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
        for x, y in zip(xs, ys, strict=True)
    ]


class _Graph:
    """The QDQ graph in torch, with its learnable steps, weights and biases."""

    def __init__(self, model: onnx.ModelProto, float_model: onnx.ModelProto, probs: bool) -> None:
        import torch

        self.torch, self.g, self.probs = torch, model.graph, probs
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        floats = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
        self.consts = {
            k: torch.tensor(v, dtype=torch.float64 if v.dtype.kind == "f" else None)
            for k, v in init.items()
        }
        self.steps: dict[str, Any] = {}  # activation scale initializer -> log step
        self.zp: dict[str, tuple[float, int, int]] = {}  # -> zero point, qmin, qmax
        self.weights: dict[str, Any] = {}  # weight DequantizeLinear output -> float weight
        self.wmeta: dict[str, tuple[str, str, int | None, int]] = {}  # -> q, scale, axis, qmax
        self.biases: dict[str, Any] = {}  # bias DequantizeLinear output -> float bias
        self.bmeta: dict[str, tuple[str, str]] = {}  # -> int32 initializer, its scale
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear" and n.input[0] not in init:
                zp = init[n.input[2]]
                info = np.iinfo(zp.dtype)
                self.steps[n.input[1]] = torch.tensor(
                    math.log(float(init[n.input[1]])), dtype=torch.float64, requires_grad=True
                )
                self.zp[n.input[1]] = (float(zp), int(info.min), int(info.max))
            elif n.op_type == "DequantizeLinear" and n.input[0] in init:
                self._parameter(n, init, floats)

    def _parameter(self, n: onnx.NodeProto, init: dict, floats: dict) -> None:
        q, scale = init[n.input[0]], init[n.input[1]]
        base = n.input[0].removesuffix("_quantized")
        zp = init[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros(1)
        if np.any(zp != 0):
            raise PassError(
                "quantize_to_tolerance",
                f"qat_images: weight {base} has a non-zero zero point; the fine-tune keeps "
                "symmetric weights only (set qat_images: 0)",
            )
        axis = _attrs(n).get("axis", 1) if scale.ndim else None
        dequant = q.astype(np.float64) * (
            scale.reshape(_shape(q.ndim, axis)) if axis is not None else scale
        )
        start = floats.get(base)
        value = start if start is not None and start.shape == q.shape else dequant
        tensor = self.torch.tensor(value, dtype=self.torch.float64, requires_grad=True)
        if q.dtype == np.int32:
            self.biases[n.output[0]] = tensor
            self.bmeta[n.output[0]] = (n.input[0], n.input[1])
        else:
            qmax = int(np.abs(q.astype(np.int64)).max()) or int(np.iinfo(q.dtype).max)
            self.weights[n.output[0]] = tensor
            self.wmeta[n.output[0]] = (n.input[0], n.input[1], axis, qmax)

    def _ste_round(self, x):
        return (self.torch.round(x) - x).detach() + x

    def _weight_step(self, name: str):
        w = self.weights[name].detach()
        _, _, axis, qmax = self.wmeta[name]
        if axis is None:
            return self.torch.clamp(w.abs().max(), min=1e-12) / qmax
        dims = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        return self.torch.clamp(w.abs().amax(dim=dims, keepdim=True), min=1e-12) / qmax

    def _fake_weight(self, name: str):
        step, qmax = self._weight_step(name), self.wmeta[name][3]
        return self.torch.clamp(self._ste_round(self.weights[name] / step), -qmax, qmax) * step

    def _fake_act(self, x, scale: str):
        s = self.torch.exp(self.steps[scale])
        zp, lo, hi = self.zp[scale]
        return (self.torch.clamp(self._ste_round(x / s) + zp, lo, hi) - zp) * s

    def outputs(self, xs: list[Any]) -> list[Any]:
        """The graph's output for each image; images of one shape go through together."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[Any] = [None] * len(xs)
        for idx in groups.values():
            for i, y in zip(idx, self._same_shape([xs[i] for i in idx]), strict=True):
                out[i] = y
        return out

    def _same_shape(self, xs: list[Any]) -> list[Any]:
        """Batched while the ops allow, then one image at a time."""
        torch = self.torch
        env = dict(self.consts)
        env[self.g.input[0].name] = torch.cat(xs)
        nodes = list(self.g.node)
        for i, n in enumerate(nodes):
            if n.op_type not in _BATCHED:
                live = {k: v for k, v in env.items() if k not in self.consts}
                return [
                    self._run(nodes[i:], self.consts | {k: v[b : b + 1] for k, v in live.items()})
                    for b in range(len(xs))
                ]
            self._run([n], env)
        out = env[self.g.output[0].name]
        return [out[b : b + 1] for b in range(len(xs))]

    def _run(self, nodes: list[onnx.NodeProto], env: dict[str, Any]):
        for n in nodes:
            out = self._op(n, [env[x] if x else None for x in n.input])
            for name, value in zip(
                n.output, out if isinstance(out, tuple) else (out,), strict=False
            ):
                env[name] = value
        return env.get(self.g.output[0].name)

    def _op(self, n: onnx.NodeProto, ins: list[Any]):
        torch, F = self.torch, self.torch.nn.functional
        a = _attrs(n)
        match n.op_type:
            case "QuantizeLinear":
                return self._fake_act(ins[0], n.input[1])
            case "DequantizeLinear" if n.output[0] in self.weights:
                return self._fake_weight(n.output[0])
            case "DequantizeLinear" if n.output[0] in self.biases:
                return self.biases[n.output[0]]
            case "DequantizeLinear":
                return ins[0]  # its QuantizeLinear already dequantized (fake quantization)
            case "Conv":
                pads = a.get("pads", [0] * 4)
                half = len(pads) // 2
                if pads[:half] != pads[half:]:
                    x = F.pad(
                        ins[0],
                        [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])],
                    )
                    pads = [0] * len(pads)
                else:
                    x = ins[0]
                return F.conv2d(
                    x,
                    ins[1],
                    ins[2] if len(ins) > 2 else None,
                    a.get("strides", 1),
                    pads[:half],
                    a.get("dilations", 1),
                    a.get("group", 1),
                )
            case "Sigmoid":
                return torch.sigmoid(ins[0])
            case "Relu":
                return torch.relu(ins[0])
            case "Mul":
                return ins[0] * ins[1]
            case "Add":
                return ins[0] + ins[1]
            case "Transpose":
                return ins[0].permute(*a.get("perm", reversed(range(ins[0].ndim))))
            case "Reshape":
                shape = [
                    ins[0].shape[i] if v == 0 else v
                    for i, v in enumerate(int(v) for v in ins[1].tolist())
                ]
                return ins[0].reshape(shape)
            case "Shape":
                return torch.tensor(list(ins[0].shape), dtype=torch.int64)
            case "Gather":
                shape = list(ins[0].shape)
                axis = a.get("axis", 0) % len(shape)
                idx = ins[1].to(torch.int64)
                idx = torch.where(idx < 0, idx + shape[axis], idx)  # ONNX counts from the end
                out = torch.index_select(ins[0], axis, idx.reshape(-1))
                return out.reshape(shape[:axis] + list(idx.shape) + shape[axis + 1 :])
            case "Squeeze":
                axes = a["axes"] if "axes" in a else [int(v) for v in ins[1].reshape(-1)]
                return ins[0].squeeze(tuple(ax % ins[0].ndim for ax in axes))
            case "Unsqueeze":
                out = ins[0]
                axes = a["axes"] if "axes" in a else [int(v) for v in ins[1].reshape(-1)]
                for ax in sorted(axes):
                    out = out.unsqueeze(ax)
                return out
            case "Concat":
                return torch.cat(ins, a["axis"])
            case "Gemm":
                x = ins[0].t() if a.get("transA", 0) else ins[0]
                w = ins[1].t() if a.get("transB", 0) else ins[1]
                bias = ins[2] if len(ins) > 2 and ins[2] is not None else 0.0
                return a.get("alpha", 1.0) * (x @ w) + a.get("beta", 1.0) * bias
            case "MatMul":
                return ins[0] @ ins[1]
            case "Softmax":
                return torch.softmax(ins[0], a.get("axis", -1))
            case "LSTM":
                return self._lstm(ins, a)
        raise PassError("quantize_to_tolerance", f"qat_images: op {n.op_type} not supported")

    def _lstm(self, ins: list[Any], a: dict[str, Any]):
        """ONNX LSTM (gates i, o, f, c; Y [T, dirs, B, H]) through torch's (i, f, g, o)."""
        torch = self.torch
        if len(ins) > 4 and any(x is not None for x in ins[4:]):
            raise PassError(
                "quantize_to_tolerance",
                "qat_images: LSTM with sequence_lens or "
                "initial states is not supported; set qat_images: 0",
            )
        x, w, r, b = ins[:4]
        hs, dirs = a["hidden_size"], 2 if a.get("direction", b"forward") == b"bidirectional" else 1
        order = [0, 2, 3, 1]

        def gates(m):
            return torch.cat([m[i * hs : (i + 1) * hs] for i in order])

        flat = []
        for d in range(dirs):
            bias = b[d] if b is not None else torch.zeros(8 * hs, dtype=x.dtype)
            flat += [gates(w[d]), gates(r[d]), gates(bias[: 4 * hs]), gates(bias[4 * hs :])]
        h0 = torch.zeros(dirs, x.shape[1], hs, dtype=x.dtype)
        y, hn, cn = torch._VF.lstm(x, (h0, h0), flat, True, 1, 0.0, False, dirs == 2, False)
        return y.reshape(x.shape[0], x.shape[1], dirs, hs).permute(0, 2, 1, 3), hn, cn

    def loss(self, batch: list[tuple[Any, Any]]):
        """Mean per-frame KL divergence from the teacher's class distribution."""
        torch = self.torch
        outs = self.outputs([x for x, _ in batch])
        total = 0.0
        for y, (_, t) in zip(outs, batch, strict=True):
            total = (
                total
                + torch.nn.functional.kl_div(
                    self._log(y), self._log(t), log_target=True, reduction="none"
                )
                .sum(-1)
                .mean()
            )
        return total / len(batch)

    def _log(self, y):
        if self.probs:
            return self.torch.log(self.torch.clamp(y, min=1e-12))
        return self.torch.log_softmax(y, -1)

    def kl(self, data: list[tuple[Any, Any]], batch: int = 32) -> float:
        if not data:
            return 0.0
        with self.torch.no_grad():
            parts = [
                float(self.loss(data[i : i + batch])) * len(data[i : i + batch])
                for i in range(0, len(data), batch)
            ]
        return sum(parts) / len(data)

    def export(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model` with the learned steps, weights and biases written back."""
        out = modelio.copy(model)
        inits = {t.name: t for t in out.graph.initializer}

        def put(name: str, value: np.ndarray) -> None:
            inits[name].CopyFrom(numpy_helper.from_array(value, name))

        with self.torch.no_grad():
            for scale, log_step in self.steps.items():
                put(scale, np.array(math.exp(float(log_step)), np.float32))
            wsteps = {}
            for name, (qname, sname, axis, qmax) in self.wmeta.items():
                step = self._weight_step(name).numpy()
                q = np.clip(np.rint(self.weights[name].numpy() / step), -qmax, qmax)
                put(qname, q.astype(numpy_helper.to_array(inits[qname]).dtype))
                wsteps[name] = step.reshape(-1).astype(np.float32)
                put(sname, wsteps[name] if axis is not None else wsteps[name].reshape(()))
            self._export_biases(out, put, wsteps)
        return out

    def _export_biases(self, out: onnx.ModelProto, put, wsteps: dict) -> None:
        """Each bias requantized to its conv's input step x weight step, as onnxruntime's
        fused kernels read it."""
        producer = {o: n for n in out.graph.node for o in n.output}
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        for n in out.graph.node:
            if len(n.input) < 3 or n.input[2] not in self.biases:
                continue
            src = producer.get(n.input[0])
            if src is None or src.op_type != "DequantizeLinear" or n.input[1] not in wsteps:
                raise PassError(
                    "quantize_to_tolerance",
                    f"qat_images: {n.name}'s int32 bias "
                    "has no quantized input and weight to take its step from",
                )
            step = inits[src.input[1]].astype(np.float64) * wsteps[n.input[1]].astype(np.float64)
            bias = self.biases[n.input[2]].numpy() / step
            info = np.iinfo(np.int32)
            qname, sname = self.bmeta[n.input[2]]
            put(qname, np.clip(np.rint(bias), info.min, info.max).astype(np.int32))
            put(sname, step.astype(np.float32).reshape(inits[sname].shape))


def _shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return shape
