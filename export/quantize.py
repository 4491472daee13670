"""int8 quantization with Optimum's ORTQuantizer: dynamic or static (calibrated on CoLA training
sentences), and the ladder of safer settings the accuracy-aware export climbs when a try fails."""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx

from bertpack.errors import BertpackError

METHODS = ("dynamic", "static")
# Static QDQ: the matrix products and the embedding lookups (Gather holds a third of a small BERT's
# weights). LayerNorm/Softmax/Add with fixed ranges cost accuracy and buy little speed.
STATIC_OPERATORS = ["MatMul", "Gemm", "Gather"]


@dataclass(frozen=True)
class Int8Settings:
    """One quantization try. `exclude` names which sensitive nodes stay fp32."""

    method: str  # dynamic | static
    target: str  # avx2 | avx512 | avx512_vnni | arm64 (AutoQuantizationConfig preset)
    per_channel: bool = False
    reduce_range: bool = False
    exclude: str = "none"  # none | head | head+last1 | head+last2

    @property
    def name(self) -> str:
        parts = [self.method, self.target, "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.exclude != "none":
            parts.append(f"exclude-{self.exclude}")
        return " ".join(parts)


def ladder(method: str, target: str) -> list[Int8Settings]:
    """The tries in order: optimum-cli's defaults first, then safer and safer settings."""
    base = Int8Settings(method=method, target=target)
    return [
        base,
        dataclasses.replace(base, per_channel=True),
        dataclasses.replace(base, per_channel=True, exclude="head"),
        dataclasses.replace(base, per_channel=True, exclude="head+last1"),
        dataclasses.replace(base, per_channel=True, exclude="head+last1", reduce_range=True),
        dataclasses.replace(base, per_channel=True, exclude="head+last2", reduce_range=True),
    ]


def sensitive_nodes(model_path: Path, exclude: str, num_layers: int) -> list[str]:
    """Node names kept in fp32: the classifier and pooler ("head"), plus every MatMul/Gemm of the last N layers."""
    if exclude == "none":
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    products = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    chosen = [n for n in products if "/classifier/" in n or "/pooler/" in n]
    match = re.search(r"last(\d+)", exclude)
    last = int(match.group(1)) if match else 0
    for layer in range(max(num_layers - last, 0), num_layers):
        chosen += [n for n in products if f"/layer.{layer}/" in n]
    return chosen


def quantization_config(settings: Int8Settings, nodes_to_exclude: list[str]):
    """Optimum's preset for the target, with the try's per-channel / reduce-range / exclusions."""
    from optimum.onnxruntime import AutoQuantizationConfig

    is_static = settings.method == "static"
    preset = getattr(AutoQuantizationConfig, settings.target)
    kwargs = dict(is_static=is_static, per_channel=settings.per_channel, nodes_to_exclude=nodes_to_exclude,
                  operators_to_quantize=STATIC_OPERATORS if is_static else None)
    config = preset(**kwargs)
    # The VNNI and ARM presets take no reduce_range argument (they never need it); set it on the dataclass.
    return dataclasses.replace(config, reduce_range=settings.reduce_range)


@dataclass
class Calibration:
    """Token ids of CoLA training sentences used to compute the static activation ranges."""

    ids: list[list[int]] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)

    def dataset(self):
        import datasets

        cols = {"input_ids": self.ids, "attention_mask": [[1] * len(s) for s in self.ids],
                "token_type_ids": [[0] * len(s) for s in self.ids]}
        return datasets.Dataset.from_dict({k: v for k, v in cols.items() if k in self.input_names})


def calibration_sample(sentences: Sequence[str], count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = list(sentences)
    return pool if len(pool) <= count else rng.sample(pool, count)


def quantize(fp32_dir: Path, work_dir: Path, settings: Int8Settings, num_layers: int,
             calibration: Calibration | None = None) -> Path:
    """Quantize fp32_dir/model.onnx (the unfused graph: ORT's quantizer cannot type the fused contrib ops)."""
    from optimum.onnxruntime import AutoCalibrationConfig, ORTQuantizer

    source = Path(fp32_dir) / "model.onnx"
    config = quantization_config(settings, sensitive_nodes(source, settings.exclude, num_layers))
    save_dir = Path(work_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    quantizer = ORTQuantizer.from_pretrained(str(fp32_dir), file_name="model.onnx")
    ranges = None
    if settings.method == "static":
        if calibration is None or not calibration.ids:
            raise BertpackError("static int8 needs calibration sentences (CoLA training split); pass --data")
        ds = calibration.dataset()
        ranges = quantizer.fit(dataset=ds, calibration_config=AutoCalibrationConfig.minmax(ds),
                               onnx_augmented_model_name=str(save_dir / "augmented_model.onnx"),
                               operators_to_quantize=config.operators_to_quantize)
    quantizer.quantize(quantization_config=config, save_dir=save_dir, file_suffix="int8", calibration_tensors_range=ranges)
    path = save_dir / "model_int8.onnx"
    if not path.is_file():
        raise BertpackError(f"ORTQuantizer wrote no {path}")
    return path


def settings_record(settings: Int8Settings, num_layers: int, fp32_model: Path) -> dict:
    record = dataclasses.asdict(settings)
    record["name"] = settings.name
    record["nodes_excluded"] = sensitive_nodes(fp32_model, settings.exclude, num_layers)
    if settings.method == "static":
        record["operators"] = STATIC_OPERATORS
        record["calibration"] = "minmax"
    return record
