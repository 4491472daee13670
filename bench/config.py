"""Options of `bertpack bench`, as one dataclass shared by the CLI and `run_bench`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ARCHS = ("finetuned", "bert-base")
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)

# Engine names, in the order they are measured and shown. `pytorch_fp32` is the reference (the book's way).
ENGINES = (
    "pytorch_fp32",
    "pytorch_fast",
    "pytorch_bf16",
    "pytorch_fp16",
    "onnx_fp32",
    "onnx_optimized",
    "onnx_int8",
    "onnx_int8_alt",
    "onnx_fp16_cuda",
    "onnx_fp16_cuda_graph",
)
INT8_ENGINES = ("onnx_int8", "onnx_int8_alt")
REFERENCE = "pytorch_fp32"


@dataclass
class BenchConfig:
    artifact_dir: Path
    out: Path = Path("bench-out")
    arch: str = "finetuned"  # finetuned = the artifact's model; bert-base = random BertConfig() weights (speed only)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    # CoLA folder, a data set, "glue" or "glue/TASK"; None = the data of the export's parity report for a model that is
    # not CoLA's, else bertpack.data.default_data_dir()
    data: str | Path | None = None
    engines: tuple[str, ...] = ENGINES
    threads: int | None = None  # None = physical cores
    sentences: int | None = None  # None = all validation sentences (finetuned) / 256 (bert-base)
    min_time_s: float = 2.0  # time each (engine, batch size) at least this long, after a full warm-up pass
    min_samples: int = 30  # ... and over at least this many timed batches
    max_passes: int = 20
    rounds: int = 1  # run every engine this many times, each in a fresh process, engines interleaved; medians reported
    end_to_end: bool = True  # the book's way (pad to 128, torch fp32, batch 32) vs the serving path
    e2e_sentences: int | None = None  # None = 256 (finetuned) / 64 (bert-base)
    e2e_batch_size: int = 32
    e2e_pad_to: int = 128
    profile: bool = True  # ORT per-operator profile of the ONNX CPU engines at one batch size
    profile_batch_size: int | None = (
        None  # one of batch_sizes; None = 32, or the largest of them under 32 (check_config)
    )
    export_dir: Path | None = None  # bert-base: reuse / keep the temporary export here
    worker_timeout_s: float = 1800.0
    # More ONNX files measured beside the artifact's variants (name -> path), e.g. int8 candidates; engine
    # "file:<name>".
    extra_models: dict[str, Path] = field(default_factory=dict)
    int8_candidates: bool = False  # also build and measure the int8 variants of bench/int8_candidates.py
    command: str | None = None  # the command line that started this bench, recorded in bench.json

    def sentence_count(self) -> int | None:
        if self.sentences is not None:
            return self.sentences
        return 256 if self.arch == "bert-base" else None

    def e2e_count(self) -> int:
        if self.e2e_sentences is not None:
            return self.e2e_sentences
        return 64 if self.arch == "bert-base" else 256
