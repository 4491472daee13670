"""int8 variants built for the int8 investigation (`bertpack bench --int8-candidates`), measured beside
the artifact's own int8 on the same batches.

The export quantizes the *unfused* fp32 graph (export/quantize.py). ORT then cannot fuse attention
at load time: each layer's attention stays ~10 small ops (Reshape/Transpose/MatMul/Softmax), and the
two activation x activation products (QK^T and AV) are dynamically quantized too, paying a
DynamicQuantizeLinear on both operands for a tiny 384-wide product. The candidate here quantizes the
ORTOptimizer-fused graph instead: Attention becomes QAttention (int8 QKV projection, attention math
in fp32), the other MatMuls DynamicQuantizeMatMul, the embedding Gather int8 (size only).
ORT's quantizer cannot infer types through the fused contrib ops; `DefaultTensorType=FLOAT` tells it
they are float tensors (they are: the fused graph is all fp32).
"""

from __future__ import annotations

import logging
from pathlib import Path


def fused_dynamic(optimized_model: Path, out: Path, per_channel: bool = True, op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather")) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns about pre-processing on every call
    quantize_dynamic(str(optimized_model), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=list(op_types),
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def build_candidates(artifact: Path, manifest: dict, out_dir: Path) -> dict[str, Path]:
    """name -> model file, for `BenchConfig.extra_models`."""
    optimized = artifact / manifest["variants"]["optimized"]["file"]
    return {
        "int8_fused_qattention": fused_dynamic(optimized, out_dir / "int8_fused_qattention.onnx"),
        "int8_fused_fp32_attention": fused_dynamic(optimized, out_dir / "int8_fused_fp32_attention.onnx", op_types=("MatMul", "Gather")),
    }
