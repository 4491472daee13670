"""int8 quantization with Optimum's ORTQuantizer: dynamic or static (calibrated on CoLA training
sentences), and the ladder of safer settings the accuracy-aware export climbs when a try fails.

Dynamic int8 quantizes the fused graph (ORTOptimizer O2), so each layer's fused Attention becomes
one QAttention: about 150 nodes instead of about 640 for the unfused graph, which is what decides
latency at batch 1 (docs/bench.md). Static QDQ quantizes the unfused graph (its QDQ pairs around
fused contrib ops are not folded on the CPU)."""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx

from bertpack.errors import BertpackError

METHODS = ("dynamic", "static")
# Static QDQ: the matrix products and the embedding lookups (Gather holds a third of a small BERT's
# weights). LayerNorm/Softmax/Add with fixed ranges cost accuracy and buy little speed.
STATIC_OPERATORS = ["MatMul", "Gemm", "Gather"]


SMOOTH_ALPHA = 0.5  # SmoothQuant's default, for dynamic int8 (docs/export.md)
# Static int8 smooths with a stronger migration: its activation ranges are fixed for every batch (docs/export.md).
STATIC_SMOOTH_ALPHA = 0.75


@dataclass(frozen=True)
class Int8Settings:
    """One quantization try. `exclude` names the groups of sensitive nodes kept in fp32:
    head = classifier + pooler; ffn_out = every layer's FFN down-projection (its input is the GELU
    output, whose outliers a per-tensor activation scale cannot hold); lastN = all products of the last N layers.
    `smooth_alpha`: SmoothQuant the QKV and FFN-up inputs first (export/smoothquant.py)."""

    method: str  # dynamic | static
    target: str  # avx2 | avx512 | avx512_vnni | arm64 (AutoQuantizationConfig preset)
    per_channel: bool = False
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    calibration: str = "minmax"  # static only: minmax | percentile
    smooth_alpha: float | None = None  # SmoothQuant migration strength (None: no smoothing)

    @property
    def name(self) -> str:
        parts = [self.method, self.target, "per-channel" if self.per_channel else "per-tensor"]
        if self.method == "static":
            parts.append(self.calibration)
        if self.reduce_range:
            parts.append("reduce-range")
        if self.exclude:
            parts.append("exclude " + "+".join(self.exclude))
        if self.smooth_alpha is not None:
            parts.append(f"smoothquant {self.smooth_alpha:g}")
        return " ".join(parts)


def ladder(method: str, target: str) -> list[Int8Settings]:
    """The tries in order: optimum-cli's defaults first, then safer and safer settings. Dynamic int8
    smooths its inputs from the fourth rung on: SmoothQuant raises int8 agreement and makes answers depend less
    on the batch, for 12 elementwise Muls (docs/export.md). Static int8
    tries SmoothQuant (QKV and FFN-up inputs) right after keeping the FFN down-projections in fp32, before
    percentile calibration: a static int8 that passes answers independently of the batch."""
    base = Int8Settings(method=method, target=target)
    pc = dataclasses.replace(base, per_channel=True)
    safer = [base, pc, dataclasses.replace(pc, exclude=("head",))]
    if method == "static":
        pct = dataclasses.replace(pc, exclude=("head", "ffn_out"), calibration="percentile")
        safer += [
            dataclasses.replace(pc, exclude=("head", "ffn_out")),
            dataclasses.replace(pc, exclude=("head", "ffn_out"), smooth_alpha=STATIC_SMOOTH_ALPHA),
            pct,
            dataclasses.replace(pct, exclude=("head", "ffn_out", "last1")),
            dataclasses.replace(pct, exclude=("head", "ffn_out", "last2"), reduce_range=True),
        ]
    else:
        smooth = dataclasses.replace(pc, exclude=("head", "ffn_out"), smooth_alpha=SMOOTH_ALPHA)
        safer += [
            smooth,
            dataclasses.replace(smooth, reduce_range=True),
            dataclasses.replace(smooth, exclude=("head", "ffn_out", "last1"), reduce_range=True),
            dataclasses.replace(smooth, exclude=("head", "ffn_out", "last2"), reduce_range=True),
        ]
    return safer


def _load_graph(model_path: Path) -> onnx.GraphProto:
    return onnx.load(str(model_path), load_external_data=False).graph


def sensitive_nodes(model: Path | onnx.GraphProto, exclude: Sequence[str], num_layers: int) -> list[str]:
    """Names of the MatMul/Gemm (and fused Attention) nodes in the `exclude` groups (see Int8Settings),
    in the model file or its already loaded graph."""
    if not exclude:
        return []
    graph = model if isinstance(model, onnx.GraphProto) else _load_graph(model)
    products = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    # The fusion names them Attention_0..N-1; graph order is layer order.
    attention = [n.name for n in graph.node if n.op_type == "Attention"]
    chosen: list[str] = []
    for group in exclude:
        if group == "head":
            chosen += [n for n in products if "/classifier/" in n or "/pooler/" in n]
        elif group == "ffn_out":
            chosen += [n for n in products if re.search(r"/layer\.\d+/output/dense/", n)]
        elif match := re.fullmatch(r"last(\d+)", group):
            for layer in range(max(num_layers - int(match.group(1)), 0), num_layers):
                chosen += [n for n in products if f"/layer.{layer}/" in n]
                chosen += attention[layer : layer + 1] if len(attention) == num_layers else []
        else:
            raise ValueError(f"unknown exclusion group {group!r}")
    return list(dict.fromkeys(chosen))


def quantization_config(settings: Int8Settings, nodes_to_exclude: list[str]):
    """Optimum's preset for the target, with the try's per-channel / reduce-range / exclusions."""
    from optimum.onnxruntime import AutoQuantizationConfig

    is_static = settings.method == "static"
    preset = getattr(AutoQuantizationConfig, settings.target)
    kwargs = dict(
        is_static=is_static,
        per_channel=settings.per_channel,
        nodes_to_exclude=nodes_to_exclude,
        operators_to_quantize=STATIC_OPERATORS if is_static else None,
    )
    config = preset(**kwargs)
    # The VNNI and ARM presets take no reduce_range argument (they never need it); set it on the dataclass.
    return dataclasses.replace(config, reduce_range=settings.reduce_range)


@dataclass
class Calibration:
    """Token ids of CoLA training sentences: static int8's activation ranges and SmoothQuant's channel ranges."""

    ids: list[list[int]] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)

    def dataset(self, ids: Sequence[Sequence[int]] | None = None):
        """One row per sentence, unpadded."""
        import datasets

        ids = [list(s) for s in (self.ids if ids is None else ids)]
        cols = {
            "input_ids": ids,
            "attention_mask": [[1] * len(s) for s in ids],
            "token_type_ids": [[0] * len(s) for s in ids],
        }
        return datasets.Dataset.from_dict({k: v for k, v in cols.items() if k in self.input_names})

    def datasets_by_length(self) -> list:
        """One dataset per token length. A histogram calibrator (percentile) stacks the outputs of one collection,
        so they need one shape; padding to one would put the [PAD] positions' activations (most of the values, for
        CoLA's short sentences) into the histograms the ranges come from."""
        by_length: dict[int, list[list[int]]] = {}
        for seq in self.ids:
            by_length.setdefault(len(seq), []).append(seq)
        return [self.dataset(group) for _, group in sorted(by_length.items())]


def calibration_sample(sentences: Sequence[str], count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = list(sentences)
    return pool if len(pool) <= count else rng.sample(pool, count)


def fused_source(optimized_model: Path, fp32_dir: Path, out_dir: Path) -> Path:
    """A folder ORTQuantizer can load holding the fused graph as model.onnx, with the tensor types of
    the fused contrib ops (Attention, SkipLayerNormalization...) filled in by ORT's symbolic shape
    inference: plain ONNX shape inference cannot type them, and the quantizer needs the types."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quant_pre_process(
        str(optimized_model),
        str(out_dir / "model.onnx"),
        skip_optimization=True,
        skip_onnx_shape=True,
        skip_symbolic_shape=False,
        auto_merge=True,
    )
    shutil.copyfile(Path(fp32_dir) / "config.json", out_dir / "config.json")
    return out_dir


def source_dir(method: str, fp32_dir: Path, fused_dir: Path | None) -> Path:
    """Where each method's input graph lives: dynamic -> the fused graph (when made), static -> the unfused one."""
    return fused_dir if method == "dynamic" and fused_dir is not None else fp32_dir


def quantize(
    model_dir: Path,
    work_dir: Path,
    settings: Int8Settings,
    num_layers: int,
    calibration: Calibration | None = None,
    ranges_cache: dict | None = None,
) -> Path:
    """Quantize model_dir/model.onnx (see `source_dir`). Static ranges and SmoothQuant's channel ranges
    are computed once and kept in `ranges_cache`."""
    from optimum.onnxruntime import AutoCalibrationConfig, ORTQuantizer

    config = quantization_config(
        settings, sensitive_nodes(Path(model_dir) / "model.onnx", settings.exclude, num_layers)
    )
    save_dir = Path(work_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if settings.smooth_alpha is not None:
        model_dir = _smoothed_source(
            Path(model_dir), save_dir / "smoothed", settings.smooth_alpha, calibration, ranges_cache
        )
    quantizer = ORTQuantizer.from_pretrained(str(model_dir), file_name="model.onnx")
    ranges = None
    if settings.method == "static":
        if calibration is None or not calibration.ids:
            raise BertpackError("static int8 needs calibration sentences (CoLA training split); pass --data")
        cache = {} if ranges_cache is None else ranges_cache
        # a smoothed graph has other tensors, so other ranges
        key = settings.calibration if settings.smooth_alpha is None else (settings.calibration, settings.smooth_alpha)
        if key not in cache:
            groups = [calibration.dataset()] if settings.calibration == "minmax" else calibration.datasets_by_length()
            calib = (
                AutoCalibrationConfig.minmax(groups[0])
                if settings.calibration == "minmax"
                else AutoCalibrationConfig.percentiles(groups[0], percentile=99.999)
            )
            for i, ds in enumerate(
                groups
            ):  # method None: Optimum keeps the calibrator (and its histograms) of the first call
                quantizer.partial_fit(
                    dataset=ds,
                    calibration_config=calib if i == 0 else dataclasses.replace(calib, method=None),
                    onnx_augmented_model_name=str(save_dir / "augmented_model.onnx"),
                    operators_to_quantize=STATIC_OPERATORS,
                )
            cache[key] = quantizer.compute_ranges()
        ranges = cache[key]
    quantizer.quantize(
        quantization_config=config, save_dir=save_dir, file_suffix="int8", calibration_tensors_range=ranges
    )
    path = save_dir / "model_int8.onnx"
    if not path.is_file():
        raise BertpackError(f"ORTQuantizer wrote no {path}")
    return path


def _smoothed_source(
    model_dir: Path, out_dir: Path, alpha: float, calibration: Calibration | None, ranges_cache: dict | None
) -> Path:
    """model_dir's graph with SmoothQuant applied, in a folder ORTQuantizer can load. The channel ranges
    and the smoothed graph are made once per alpha and reused by every rung that smooths (in `ranges_cache`)."""
    from export import smoothquant

    if calibration is None or not calibration.ids:
        raise BertpackError("SmoothQuant needs calibration sentences (CoLA training split); pass --data")
    cache = {} if ranges_cache is None else ranges_cache
    if ("smoothed", alpha) in cache:
        return cache[("smoothed", alpha)]
    if "smoothquant" not in cache:
        cache["smoothquant"] = smoothquant.channel_ranges(
            model_dir / "model.onnx", calibration.ids, calibration.input_names
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    smoothquant.smooth(model_dir / "model.onnx", out_dir / "model.onnx", cache["smoothquant"], alpha)
    shutil.copyfile(model_dir / "config.json", out_dir / "config.json")
    cache[("smoothed", alpha)] = out_dir
    return out_dir


def settings_record(
    settings: Int8Settings, num_layers: int, model_path: Path, calibration_sentences: int | None = None
) -> dict:
    """The manifest's record of one try: the settings, the graph it quantized, the nodes kept in fp32."""
    graph = _load_graph(model_path)
    record = dataclasses.asdict(settings)
    fused = any(n.op_type == "Attention" for n in graph.node)
    record["graph"] = "fused (ORTOptimizer O2), Attention -> QAttention" if fused else "unfused (as exported)"
    record["exclude"] = list(settings.exclude)
    record["name"] = settings.name
    record["nodes_excluded"] = sensitive_nodes(graph, settings.exclude, num_layers)
    if settings.method == "static":
        record["operators"] = STATIC_OPERATORS
        record["calibration_sentences"] = calibration_sentences  # CoLA training split, seeded sample
    if settings.smooth_alpha is not None:
        from export.smoothquant import SMOOTHED

        record["smoothquant"] = {
            "alpha": settings.smooth_alpha,
            "inputs_of": list(SMOOTHED),
            "calibration_sentences": calibration_sentences,
        }
    return record
