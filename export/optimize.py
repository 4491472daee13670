"""Transformer fusions with Optimum's ORTOptimizer: the CPU graph (O2) and the fp16 GPU graph (O4)."""

from __future__ import annotations

from pathlib import Path

from bertpack.errors import BertpackError
from serving.engine import quiet_ort_logs

CPU_LEVEL = "O2"  # O2 = fusions without the approximate GeLU of O3, so fp32 logits stay within 1e-3
GPU_LEVEL = "O4"  # O3 fusions + fp16 with fp32 inputs/outputs (keep_io_types)
# Optimum leaves EmbedLayerNormalization unfused because ORT's quantizer cannot take it; the fp16 graph is never
# quantized, and on CUDA the fused op (ORT's own BERT default) replaces the embeddings' ten-odd small kernels with four.
GPU_OPTIONS = {"disable_embed_layer_norm_fusion": False}


def optimize(fp32_dir: Path, work_dir: Path, level: str, options: dict | None = None) -> tuple[Path, dict[str, int]]:
    """Run ORTOptimizer at `level` on fp32_dir/model.onnx; return the new file and its fused-operator counts.
    `options`: OptimizationConfig fields over the level's (default: GPU_OPTIONS for the GPU level)."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    suffix = "fp16" if level == GPU_LEVEL else "optimized"
    if options is None:
        options = GPU_OPTIONS if level == GPU_LEVEL else {}
    config = getattr(AutoOptimizationConfig, level)(**options)
    save_dir = Path(work_dir) / suffix
    optimizer = ORTOptimizer.from_pretrained(str(fp32_dir), file_names=["model.onnx"])
    with quiet_ort_logs():  # the fp16 pass asks ORT for CUDA; without a GPU that only logs errors
        optimizer.optimize(optimization_config=config, save_dir=save_dir, file_suffix=suffix)
    path = save_dir / f"model_{suffix}.onnx"
    if not path.is_file():
        raise BertpackError(f"ORTOptimizer ({level}) wrote no {path.name}")
    fused = {k: int(v) for k, v in ORTOptimizer.get_fused_operators(str(path)).items()}
    return path, fused


def check_attention_fused(fused: dict[str, int], num_layers: int, variant: str) -> None:
    """One fused Attention per encoder layer, or the export used a non-eager attention graph."""
    got = fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0)
    if num_layers and got < num_layers:
        raise BertpackError(
            f"{variant}: {got} Attention nodes fused for {num_layers} layers; the fp32 graph must be "
            "exported with eager attention (attn_implementation='eager')"
        )
