"""SmoothQuant (Xiao et al., 2023) for int8: move part of each activation channel's range into the weights.

Dynamic int8 quantizes each activation with one scale per tensor per batch. The LayerNorm outputs
that feed the QKV and FFN-up products carry a few outlier channels (max/median 13-17x on the
embedded model), so that scale is set by them, the other channels get few levels, and a
sentence's prediction depends on its batch neighbours. Scaling x' = x / s, W' = diag(s) W with
s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) leaves the fp32 model unchanged (up to rounding) and
flattens what the quantizer sees, so int8 agrees more with PyTorch and less with its batch neighbours
(figures in docs/export.md).

The LayerNorm outputs also feed the residual path, so 1/s cannot be folded into LayerNorm: each
smoothed product gets an explicit Mul in front of it (one elementwise op on [tokens, hidden]).
ONNX Runtime's quantizer has SmoothQuant only for static QDQ (through neural-compressor); this is
the same transform, before ORTQuantizer's pass: on the fused graph for dynamic int8 (one Attention reads
each LayerNorm output), on the unfused graph for static int8 (the query, key and value products read
the same tensor and share its Mul: one scale per smoothed tensor, from the largest weight of any reader).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Products whose input is smoothed: the fused Attention's QKV projection and the FFN up-projection
# (both read a LayerNorm output). The attention output projection's input has no outliers (max/median
# 2-4x), and the FFN down-projection stays fp32 in the rungs that smooth (it failed even smoothed).
SMOOTHED = ("qkv", "ffn_in")


def products(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, str]]:
    """(node, group) for the encoder products the quantizer touches: qkv (a fused Attention, or the unfused
    query/key/value MatMuls), attn_out, ffn_in, ffn_out (MatMul with a weight initializer)."""
    inits = {i.name for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type == "Attention":
            found.append((node, "qkv"))
        elif node.op_type == "MatMul" and node.input[1] in inits and "/encoder/" in node.name:
            group = (
                "qkv"
                if "/attention/self/" in node.name
                else "attn_out"
                if "/attention/output/" in node.name
                else "ffn_in"
                if "/intermediate/" in node.name
                else "ffn_out"
            )
            found.append((node, group))
    return found


def channel_ranges(
    model_path: Path, ids: Sequence[Sequence[int]], input_names: Sequence[str], groups: Sequence[str] = SMOOTHED
) -> dict[str, np.ndarray]:
    """max |x| per hidden channel of every smoothed product's input, over `ids` (one sentence per run,
    so no padding token enters the ranges)."""
    import onnxruntime as ort

    from serving.engine import session_options

    model = onnx.load(str(model_path))
    tensors = sorted({node.input[0] for node, group in products(model.graph) if group in groups})
    for name in tensors:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="bertpack-smooth-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        session = ort.InferenceSession(str(probe), session_options(), providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    for seq in ids:
        feed = {
            "input_ids": np.array([seq], dtype=np.int64),
            "attention_mask": np.ones((1, len(seq)), dtype=np.int64),
            "token_type_ids": np.zeros((1, len(seq)), dtype=np.int64),
        }
        for name, value in zip(tensors, session.run(tensors, {k: v for k, v in feed.items() if k in input_names})):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = peak if name not in ranges else np.maximum(ranges[name], peak)
    return ranges


def smooth(
    model_path: Path, out_path: Path, ranges: dict[str, np.ndarray], alpha: float, groups: Sequence[str] = SMOOTHED
) -> list[str]:
    """Write the smoothed graph to out_path; return the names of the products smoothed."""
    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}  # smoothed tensor -> the products reading it
    for node, group in products(graph):
        if group in groups:
            readers.setdefault(node.input[0], []).append(node)
    inserted: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for x, nodes in readers.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]  # [in, out] each
        w_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
        s = np.clip(np.maximum(ranges[x], 1e-5) ** alpha / w_max ** (1 - alpha), 1e-2, 1e2).astype(np.float32)
        for node, weight in zip(nodes, weights):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight * s[:, None], node.input[1]))
        first = nodes[0]
        scale = f"{first.name}_smooth_inv_scale"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale))
        smoothed = f"{first.name}_smoothed_input"
        inserted.append((first, helper.make_node("Mul", [x, scale], [smoothed], name=f"{first.name}_smooth")))
        for node in nodes:
            node.input[0] = smoothed
    for consumer, mul in inserted:  # each Mul right before its first reader keeps the graph in topological order
        graph.node.insert(list(graph.node).index(consumer), mul)
    onnx.save(model, str(out_path))
    return [node.name for nodes in readers.values() for node in nodes]
