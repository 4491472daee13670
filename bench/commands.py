"""CLI commands of this stage, registered on the `bertpack` Typer app. Keep imports inside the
command functions: `bertpack --help` must not import torch or onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bertpack.errors import BertpackError


class CheckMissed(BertpackError):
    """`bertpack bench --check`: a measured check missed (the outputs are written)."""

    exit_code = 3


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BertpackError(f"{option} takes comma-separated integers, e.g. 1,8,32,128; got {text!r}") from None
    if not values:
        raise BertpackError(f"{option} is empty; give e.g. 1,8,32,128")
    return values


def bench(
    artifact_dir: Path = typer.Argument(
        ..., help="Folder written by `bertpack export` (its manifest names the PyTorch checkpoint)."
    ),
    out: Path = typer.Option(
        Path("bench-out"), help="Folder for bench.json, bench.md and bench.png (replaced if it holds a previous bench)."
    ),
    arch: str = typer.Option(
        "finetuned", help="finetuned (the artifact's model) or bert-base (random BertConfig() weights, speed only)."
    ),
    batch_sizes: str = typer.Option("1,8,32,128", help="Comma-separated batch sizes."),
    data: Optional[str] = typer.Option(
        None,
        help=(
            "Validation data: a CoLA folder, a data set, 'glue' or 'glue/sst2' (default: the data of the export's "
            "parity "
            "report; for CoLA's labels shared/data/cola beside the repository)."
        ),
    ),
    engines: Optional[str] = typer.Option(
        None,
        help="Comma-separated subset of: pytorch_fp32, pytorch_fast, pytorch_bf16, pytorch_fp16, onnx_fp32, "
        "onnx_optimized, onnx_int8, onnx_int8_alt, onnx_fp16_cuda, onnx_fp16_cuda_graph "
        "(default all).",
    ),
    threads: Optional[int] = typer.Option(None, help="Threads per engine (default: physical cores)."),
    sentences: Optional[int] = typer.Option(None, help="Use N validation sentences (default all; 256 for bert-base)."),
    min_time: float = typer.Option(2.0, help="Time each engine and batch size for at least this many seconds."),
    min_samples: int = typer.Option(30, help="... and over at least this many timed batches."),
    max_passes: int = typer.Option(20, help="At most this many timed passes over the sentences."),
    rounds: int = typer.Option(
        1,
        help="Run every engine this many times, each time in a fresh process, engines "
        "interleaved: the table shows the medians, each check the median of the "
        "per-round ratios and their range (PyTorch's GPU launch cost changes from one "
        "process to the next).",
    ),
    end_to_end: bool = typer.Option(
        True, help="Also time the book's way (pad to 128, PyTorch fp32, batch 32) against the serving path."
    ),
    e2e_sentences: Optional[int] = typer.Option(
        None, help="Sentences for the end-to-end comparison (default 256; 64 for bert-base)."
    ),
    profile: bool = typer.Option(
        True, help="Per-operator ONNX Runtime profile of the ONNX CPU engines at --profile-batch-size."
    ),
    profile_batch_size: Optional[int] = typer.Option(
        None, help="Batch size profiled, one of --batch-sizes (default 32, or the largest of them under 32)."
    ),
    export_dir: Optional[Path] = typer.Option(
        None, help="bert-base: keep (and reuse) the random-weight export here instead of a temp folder."
    ),
    int8_candidates: bool = typer.Option(
        False, help="Also build and measure int8 from the fused graph (QAttention), for the int8 investigation."
    ),
    extra_model: Optional[List[str]] = typer.Option(
        None, help="NAME=PATH: also measure this ONNX file (engine file:NAME), e.g. an int8 candidate. Repeatable."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit 3 when a measured check misses (listed under Checks: "
        "int8 and GPU speed-ups, int8 MCC, the serving path against "
        "the book's way); checks the engines run cannot measure do "
        "not count.",
    ),
) -> None:
    """Benchmark ONNX Runtime variants against PyTorch: latency, throughput, memory and MCC per engine and batch
    size."""
    import shlex
    import sys

    from bench.config import ENGINES, BenchConfig
    from bench.report import missed_checks
    from bench.runner import run_bench

    chosen = tuple(e.strip() for e in engines.split(",") if e.strip()) if engines else ENGINES
    extras = {}
    for item in extra_model or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise BertpackError(f"--extra-model takes NAME=PATH, got {item!r}")
        extras[name] = Path(path)
    cfg = BenchConfig(
        artifact_dir=artifact_dir,
        out=out,
        arch=arch,
        batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        data=data,
        engines=chosen,
        threads=threads,
        sentences=sentences,
        min_time_s=min_time,
        min_samples=min_samples,
        max_passes=max_passes,
        rounds=rounds,
        end_to_end=end_to_end,
        e2e_sentences=e2e_sentences,
        profile=profile,
        profile_batch_size=profile_batch_size,
        export_dir=export_dir,
        extra_models=extras,
        int8_candidates=int8_candidates,
        command=shlex.join(["bertpack", *sys.argv[1:]]),
    )
    payload = run_bench(cfg, typer.echo)
    if check and (missed := missed_checks(payload)):
        raise CheckMissed(
            f"{len(missed)} check{'s' if len(missed) > 1 else ''} missed ({out} holds the results): "
            + " | ".join(missed)
        )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command()(bench)
