"""fp32 ONNX export through Optimum, with eager attention so ORT can fuse Attention later."""

from __future__ import annotations

from pathlib import Path

import onnx

from bertpack.errors import BertpackError, first_line

TASK = "text-classification"


def export_fp32(checkpoint: Path, out_dir: Path, opset: int | None = None) -> Path:
    """Write out_dir/model.onnx (dynamic batch and sequence axes) plus config and tokenizer files.

    The model is loaded here with `attn_implementation="eager"`: the SDPA graph exports a
    pattern the ORT fusion does not recognise, and then no Attention node is fused.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    from bertpack.models import load_classifier, load_tokenizer

    try:
        model = load_classifier(checkpoint, attn_implementation="eager").eval()
        tokenizer = load_tokenizer(checkpoint)
    except Exception as exc:  # noqa: BLE001 - safetensors/transformers raise many types; all mean a damaged checkpoint
        raise BertpackError(
            f"cannot load the checkpoint {checkpoint} ({type(exc).__name__}: {first_line(exc)}); "
            "is it damaged? re-run bertpack train"
        ) from None
    # Validation against PyTorch happens in our own parity report, on CoLA, not on random inputs.
    onnx_export_from_model(model, out_dir, opset=opset, task=TASK, preprocessors=[tokenizer], do_validation=False)
    path = Path(out_dir) / "model.onnx"
    if not path.is_file():
        raise BertpackError(f"the Optimum export wrote no model.onnx into {out_dir}")
    check_dynamic_axes(path)
    return path


def check_dynamic_axes(path: Path) -> None:
    """Every input must have symbolic batch and sequence dimensions (any batch, any length)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 2 or any(d.dim_value for d in dims):
            raise BertpackError(
                f"{path}: input {inp.name} has fixed dimensions {[d.dim_value or d.dim_param for d in dims]}; "
                "expected dynamic batch and sequence axes"
            )


def graph_inputs(path: Path) -> list[str]:
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
