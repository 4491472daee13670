"""int8 variants built for the int8 investigation (`bertpack bench --int8-candidates`), measured beside
the artifact's own int8 on the same batches.

The export's dynamic int8 quantizes the ORTOptimizer-fused graph (Attention -> QAttention) and keeps
what its accuracy ladder excluded in fp32 (for the embedded model: the classifier/pooler and every FFN
down-projection). The candidates show what the other choices cost or buy in speed:
- int8_fused_all: the fused graph with nothing excluded (every MatMul int8);
- int8_fused_fp32_attention: the fused graph with Attention left in fp32;
- int8_unfused: the unfused graph (the export's choice before QAttention): each layer's attention stays
  ~10 small ops, and the QK^T and AV products are dynamically quantized on both operands.
ORT's quantizer cannot infer types through the fused contrib ops; `DefaultTensorType=FLOAT` tells it
they are float tensors (they are: the fused graph is all fp32).
"""

from __future__ import annotations

import logging
from pathlib import Path


def dynamic_int8(
    model: Path, out: Path, per_channel: bool = True, op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather")
) -> Path:
    """ORT dynamic int8 of `model` (fused or not: a fused graph's Attention becomes QAttention when listed in
    `op_types`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns about pre-processing on every call (through the root logger)
    try:
        quantize_dynamic(
            str(model),
            str(out),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return out


def build_candidates(artifact: Path, manifest: dict, out_dir: Path) -> dict[str, Path]:
    """name -> model file, for `BenchConfig.extra_models`."""
    from bertpack.errors import BertpackError
    from bertpack.manifest import left_out

    if missing := left_out(manifest, "fp32"):  # int8_unfused starts from it
        raise BertpackError(
            f"--int8-candidates needs the unfused fp32 graph ({missing[0]}), which the model store's copy "
            f"{artifact} leaves out; bench the export's folder instead: {missing[1]}"
        )
    optimized = artifact / manifest["variants"]["optimized"]["file"]
    return {
        "int8_fused_all": dynamic_int8(optimized, out_dir / "int8_fused_all.onnx"),
        "int8_fused_fp32_attention": dynamic_int8(
            optimized, out_dir / "int8_fused_fp32_attention.onnx", op_types=("MatMul", "Gather")
        ),
        "int8_unfused": dynamic_int8(artifact / manifest["variants"]["fp32"]["file"], out_dir / "int8_unfused.onnx"),
    }
