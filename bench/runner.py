"""`run_bench`: pick the engines, measure each in its own worker process, score, write the report."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bench.batches import fixed_padding_stats, make_batches, padding_stats
from bench.bert_base import TOKENIZER_FILES
from bench.config import ARCHS, ENGINES, INT8_ENGINES, REFERENCE, BenchConfig
from bertpack.data import DataSpec, data_source, validation_sentences
from bertpack.errors import BertpackError, first_line, storage_errors
from bertpack.labels import COLA_NAMES
from bertpack.locks import writing
from export.checkpoint import named_by_artifact

REPO = Path(__file__).resolve().parent.parent


def check_config(cfg: BenchConfig) -> dict:
    """Every user error that can be found before the slow work starts; returns the manifest."""
    from bench.report import OUTPUT_FILES
    from bertpack.files import check_writable_parent
    from bertpack.manifest import read_manifest, verify_files

    if cfg.arch not in ARCHS:
        raise BertpackError(f"--arch must be one of {', '.join(ARCHS)}, not {cfg.arch!r}")
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes):
        raise BertpackError("--batch-sizes must be positive integers, e.g. 1,8,32,128")
    cfg.engines = tuple(dict.fromkeys(cfg.engines))  # each engine once
    # Increasing: a worker reads its peak memory after each size, and stops at the first size that does not fit.
    cfg.batch_sizes = tuple(sorted(set(cfg.batch_sizes)))
    for name, path in cfg.extra_models.items():
        _check_onnx_file(name, Path(path))
    unknown = [e for e in cfg.engines if e not in ENGINES]
    if unknown:
        raise BertpackError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if REFERENCE not in cfg.engines:
        raise BertpackError(f"--engines must include {REFERENCE}: every speed-up is measured against it")
    if cfg.threads is not None and cfg.threads < 1:
        raise BertpackError("--threads must be >= 1")
    if cfg.sentences is not None and cfg.sentences < 1:
        raise BertpackError("--sentences must be >= 1")
    if cfg.min_time_s < 0 or cfg.min_samples < 1 or cfg.max_passes < 1:
        raise BertpackError("--min-time must be >= 0, --min-samples and --max-passes >= 1")
    if cfg.rounds < 1:
        raise BertpackError(f"--rounds must be >= 1 (default 1), not {cfg.rounds}")
    if cfg.e2e_sentences is not None and cfg.e2e_sentences < 1:
        raise BertpackError(
            f"--e2e-sentences must be >= 1 (default 256), not {cfg.e2e_sentences}; to skip the comparison pass "
            "--no-end-to-end"
        )
    if cfg.profile_batch_size is not None and cfg.profile_batch_size < 1:
        raise BertpackError(
            f"--profile-batch-size must be >= 1 (default 32), not {cfg.profile_batch_size}; to skip profiling pass "
            "--no-profile"
        )
    artifact = Path(cfg.artifact_dir)
    manifest = read_manifest(artifact)  # the argument's error before the options' (--out defaults)
    # A damaged model would otherwise show up only as a "failed" row. bert-base takes only the tokenizer (and settings)
    # from the artifact, so a folder holding just those will do (the GPU host gets no more).
    verify_files(artifact, manifest, None if cfg.arch == "finetuned" else TOKENIZER_FILES)
    if not Path(manifest.get("source", {}).get("checkpoint", ""), "config.json").is_file() and cfg.arch == "finetuned":
        raise BertpackError(
            f"the PyTorch checkpoint {manifest.get('source', {}).get('checkpoint')!r} named in "
            f"{artifact}/manifest.json "
            "is gone; the PyTorch engines load it: keep the run folder, or re-export from where it is now"
        )
    if cfg.arch == "finetuned":
        named_by_artifact(Path(manifest["source"]["checkpoint"]), artifact)
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "bench.json").is_file())):
        raise BertpackError(f"--out {out} exists and is not a previous bench output; pick another folder")
    if out.is_dir() and (others := sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)):
        # a previous bench is replaced whole: never with someone's other files in it
        raise BertpackError(
            f"--out {out} holds a previous bench but also {', '.join(others[:5])}, which replacing it would delete; "
            "pick another folder, or move those out"
        )
    if cfg.profile_batch_size is None:
        cfg.profile_batch_size = max([b for b in cfg.batch_sizes if b <= 32] or [min(cfg.batch_sizes)])
    elif cfg.profile and cfg.profile_batch_size not in cfg.batch_sizes:
        raise BertpackError(
            f"--profile-batch-size {cfg.profile_batch_size} is not one of --batch-sizes "
            f"{','.join(map(str, cfg.batch_sizes))}; pick one of those, or pass --no-profile"
        )
    check_writable_parent(out, "--out")
    if cfg.export_dir is not None:
        if Path(cfg.export_dir).is_file():
            raise BertpackError(
                f"--export-dir {cfg.export_dir} is a file; pass a folder to keep the bert-base export in"
            )
        check_writable_parent(Path(cfg.export_dir) / "artifact", "--export-dir")
    return manifest


def _check_onnx_file(name: str, path: Path) -> None:
    """An --extra-model must be an ONNX model with a graph (an empty file parses as an empty model)."""
    import onnx

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise BertpackError(
            f"--extra-model {name}={path}: the name (engine file:NAME, also a file name) may hold only letters, "
            "digits, '_', '-' and '.'; e.g. --extra-model int8_mine=PATH"
        )
    if not path.is_file():
        raise BertpackError(f"--extra-model {name}={path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, onnx its own types
        raise BertpackError(f"--extra-model {name}={path} is not an ONNX model ({first_line(exc, 120)})") from None
    if not model.graph.node or not model.graph.input:
        raise BertpackError(
            f"--extra-model {name}={path} is not an ONNX model (no graph nodes or inputs); pass a .onnx file written "
            "by an exporter"
        )


def _cpu_has_bf16() -> bool:
    from bertpack.machine import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def plan_engines(
    cfg: BenchConfig, manifest: dict, artifact: Path, device: str, torch_cuda: bool
) -> tuple[list[dict], list[dict]]:
    """(engines to run, engines skipped with the reason)."""
    from serving.cuda import cuda_available

    variants = manifest["variants"]
    alt = next((name for name in variants if name.startswith("int8_")), None)
    torch_device = "cuda" if device == "cuda" and torch_cuda else "cpu"
    run, skipped = [], []
    for name in cfg.engines:
        spec: dict = {"engine": name, "device": "cpu"}
        reason = None
        if name.startswith("pytorch_"):
            spec["device"] = torch_device
            if name == "pytorch_bf16" and torch_device == "cpu" and not _cpu_has_bf16():
                reason = "this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated)"
            if name == "pytorch_fp16" and torch_device == "cpu":
                reason = "fp16 weights are for CUDA (no GPU here; PyTorch CPU fp16 matmuls are not a fast path)"
        elif name in ("onnx_fp16_cuda", "onnx_fp16_cuda_graph"):
            spec.update(
                device="cuda", variant="fp16", model_file=str(artifact / variants.get("fp16", {}).get("file", "-"))
            )
            if not cuda_available():
                reason = "no GPU: the CUDA execution provider needs an NVIDIA device (none visible here)"
            elif "fp16" not in variants:
                reason = "the artifact has no fp16 variant"
        else:
            variant = {"onnx_fp32": "fp32", "onnx_optimized": "optimized", "onnx_int8": "int8", "onnx_int8_alt": alt}[
                name
            ]
            spec["variant"] = variant
            if variant is None or variant not in variants:
                reason = f"the artifact has no {variant or 'second int8'} variant"
            else:
                spec.update(
                    model_file=str(artifact / variants[variant]["file"]), settings=variants[variant].get("settings")
                )
        if reason:
            skipped.append({"engine": name, "reason": reason})
        else:
            run.append(spec)
    for name, path in cfg.extra_models.items():
        run.append({"engine": f"file:{name}", "device": "cpu", "model_file": str(Path(path).resolve())})
    return run, skipped


def run_worker(spec: dict, work: Path, threads: int, timeout: float) -> dict:
    """Run bench.worker in a fresh process with its thread pools pinned to `threads`."""
    tag = spec.get("engine", spec.get("mode"))
    spec_path, result_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.worker", str(spec_path), str(result_path)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"engine": tag, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not result_path.is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"engine": tag, "error": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def _select_sentences(sentences: list, labels: list, domains: list, count: int | None, seed: int = 0):
    if count is None or count >= len(sentences):
        return sentences, labels, domains
    rows = sorted(random.Random(seed).sample(range(len(sentences)), count))  # both domains, reproducibly
    return [sentences[i] for i in rows], [labels[i] for i in rows], [domains[i] for i in rows]


def run_bench(cfg: BenchConfig, echo: Callable[[str], None]) -> dict:
    from bertpack.files import remove_leftovers, staging_dir, work_dir
    from bench import report as rp
    from bench.machine import machine_info
    from serving.engine import OnnxClassifier, physical_cores
    from serving.cuda import cuda_available
    from bertpack.manifest import encoding_variant

    import datasets

    datasets.disable_progress_bars()
    manifest = check_config(cfg)
    cola = data_source(cfg.data, "bench", manifest["labels"], DataSpec.from_record(manifest.get("data_source")))
    threads = cfg.threads or physical_cores()
    started = datetime.now(timezone.utc)
    out = Path(cfg.out)
    # A disk that fills up: one line. Outermost and innermost, as in the export (export/pipeline.py).
    stopped = storage_errors(out.parent, "bench", f"nothing was written to {out}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(stopped)
        # Two benches at once would time each other's load and write one --out: the second is refused.
        stack.enter_context(writing(out, "bertpack bench"))
        for line in remove_leftovers(out):  # of a bench killed outright (a bert-base export: GBs)
            echo(f"note: {line}")
        # Beside --out, not in /tmp, so the next bench removes one that a killed bench left (remove_leftovers).
        work = stack.enter_context(work_dir(out))
        stack.enter_context(stopped)
        artifact = Path(cfg.artifact_dir).resolve()
        if cfg.arch == "bert-base":
            from bench.bert_base import export_bert_base

            export_work = Path(cfg.export_dir) if cfg.export_dir else work / "bert-base"
            method = manifest["variants"].get("int8", {}).get("method", "auto")
            if not cfg.int8_candidates and not set(INT8_ENGINES) & set(cfg.engines):
                method = "none"  # no int8 engine asked for: skip the slowest part of the export
            method = method if method in ("static", "dynamic", "none") else "auto"
            artifact = export_bert_base(export_work, artifact, cola, method, echo, labels=manifest["labels"])
            manifest = json.loads((artifact / "manifest.json").read_text())
        checkpoint = manifest.get("source", {}).get("checkpoint", "")
        if not Path(checkpoint, "config.json").is_file():
            raise BertpackError(
                f"the PyTorch checkpoint {checkpoint} named in {artifact}/manifest.json is gone; "
                "the PyTorch engines load it: keep the run folder, or re-export from where it is now"
            )
        checkpoint = str(named_by_artifact(Path(checkpoint), artifact))

        if cfg.int8_candidates:
            from bench.int8_candidates import build_candidates

            echo("bench: building the int8 candidates (quantized fused graph) ...")
            cfg.extra_models = {**build_candidates(artifact, manifest, work / "int8-candidates"), **cfg.extra_models}
        validation = validation_sentences(cola, manifest["labels"])  # label ids as the model's
        sentences, labels, domains = _select_sentences(*validation, cfg.sentence_count())
        encoder = OnnxClassifier(
            artifact, variant=encoding_variant(manifest), device="cpu", threads=1, verify=True
        )  # the serving tokenizer
        ids, pad_id, input_names = encoder.encode(sentences), encoder.pad_id, encoder.input_names
        del encoder
        padding = {str(b): padding_stats(make_batches(ids, b, pad_id, input_names)) for b in cfg.batch_sizes}

        torch_cuda = False
        if cuda_available():
            import torch

            torch_cuda = torch.cuda.is_available()
        device = "cuda" if torch_cuda or cuda_available() else "cpu"
        engines, skipped = plan_engines(cfg, manifest, artifact, device, torch_cuda)
        split = "CoLA validation" if tuple(manifest["labels"]) == COLA_NAMES else "validation"
        echo(
            f"bench: {len(sentences)} {split} sentences, batch sizes {list(cfg.batch_sizes)}, {threads} threads, "
            f"engines {', '.join(e['engine'] for e in engines)}"
            + (f" (skipped: {', '.join(s['engine'] for s in skipped)})" if skipped else "")
        )
        base = {
            "artifact_dir": str(artifact),
            "checkpoint": checkpoint,
            "threads": threads,
            "ids": ids,
            "pad_id": pad_id,
            "input_names": input_names,
            "batch_sizes": list(cfg.batch_sizes),
            "min_time_s": cfg.min_time_s,
            "min_samples": cfg.min_samples,
            "max_passes": cfg.max_passes,
            "profile_batch_size": cfg.profile_batch_size if cfg.profile else None,
            "profile_dir": str(work / "profiles"),
            "decision": manifest.get("decision"),
        }  # every engine's labels at the artifact's threshold
        rounds = run_rounds(cfg, engines, base, skipped, work, threads, echo)

        e2e = None
        if cfg.end_to_end:
            e2e = run_end_to_end(
                cfg,
                artifact,
                checkpoint,
                sentences,
                labels,
                domains,
                threads,
                device,
                torch_cuda,
                work,
                skipped,
                echo,
                len(manifest["labels"]),
            )
            e2e["padding_book"] = fixed_padding_stats(ids[: e2e["sentences"]], cfg.e2e_batch_size, cfg.e2e_pad_to)

        payload = rp.build_payload(
            cfg=cfg,
            artifact=artifact,
            manifest=manifest,
            machine=machine_info(),
            threads=threads,
            started=started,
            sentences=len(sentences),
            labels=labels,
            domains=domains,
            rounds=rounds,
            skipped=skipped,
            padding=padding,
            e2e=e2e,
            cola=cola,
        )
        with staging_dir(out) as stage:
            rp.write_outputs(payload, stage)
    echo("")
    echo(rp.format_text(payload))
    echo(f"\nwritten: {cfg.out}/{', '.join(rp.OUTPUT_FILES)}")
    if problem := failed_engines(skipped, Path(cfg.out)):
        raise BertpackError(problem)
    return payload


def failed_engines(skipped: list[dict], out: Path) -> str | None:
    """The error line for engines that failed (not those skipped for want of a GPU), each named once even
    when it failed in several rounds; None when none failed."""
    failed: dict[str, list[str]] = {}
    for entry in skipped:
        if entry["reason"].startswith("failed"):
            failed.setdefault(entry["engine"], []).append(entry["reason"])
    if not failed:
        return None
    return (
        f"{len(failed)} engine{'s' if len(failed) > 1 else ''} failed ({out} holds the rest): "
        + " | ".join(
            f"{engine}: {reasons[0][:200]}" + (f" (and {len(reasons) - 1} more rounds)" if len(reasons) > 1 else "")
            for engine, reasons in failed.items()
        )
        + "; check the model with `bertpack verify`, or leave the engine out of --engines"
    )


def run_rounds(
    cfg: BenchConfig,
    engines: list[dict],
    base: dict,
    skipped: list[dict],
    work: Path,
    threads: int,
    echo: Callable[[str], None],
) -> list[list[dict]]:
    """Every engine in its own worker process, `cfg.rounds` times; each round starts one engine further down the list
    so that no engine always runs first. Returns each round's results; failures go to `skipped`."""
    rounds: list[list[dict]] = []
    failed_first: set[str] = set()  # an engine that fails in round 1 is not tried again
    limits_noted: set[tuple[str, int]] = set()  # (engine, batch size) where it ran out of memory
    for number in range(1, cfg.rounds + 1):
        if cfg.rounds > 1:
            echo(f"  round {number} of {cfg.rounds}")
        shift = (number - 1) % len(engines)
        results = []
        for spec in engines[shift:] + engines[:shift]:
            if spec["engine"] in failed_first:
                continue
            echo(f"  {spec['engine']} ({spec['device']}) ...")
            # The per-operator profile once, in the first round: it is not part of the timing.
            profile_batch = base["profile_batch_size"] if number == 1 else None
            res = run_worker(
                {**base, **spec, "mode": "batches", "profile_batch_size": profile_batch},
                work,
                threads,
                cfg.worker_timeout_s,
            )
            if "error" in res:
                echo(f"    failed: {res['error']}")
                if number == 1:
                    if spec["engine"] == REFERENCE:
                        raise BertpackError(f"the reference engine {REFERENCE} failed: {res['error']}")
                    failed_first.add(spec["engine"])
                    skipped.append({"engine": spec["engine"], "reason": f"failed: {res['error']}"})
                elif spec["engine"] == REFERENCE:  # no ratios without it: this round is dropped, the finished ones kept
                    skipped.append(
                        {
                            "engine": spec["engine"],
                            "reason": f"failed in round {number}, so the results hold rounds "
                            f"1-{number - 1}: {res['error']}",
                        }
                    )
                    return rounds
                else:
                    skipped.append(
                        {
                            "engine": spec["engine"],
                            "reason": f"failed in round {number} (its row holds the other rounds): {res['error']}",
                        }
                    )
                continue
            res["round"] = number
            in_round = f" in round {number}" if number > 1 else ""
            if res["rows"]:
                results.append(res)
                echo(
                    "    "
                    + ", ".join(
                        f"b{r['batch_size']} p50 {r['p50_ms']:.2f} ms {r['sentences_per_s']:.0f}/s" for r in res["rows"]
                    )
                )
            for gave_up in res.get("skipped", []):  # e.g. CUDA out of memory: the worker stops at that size
                reason = f"batch size {gave_up['batch_size']} and larger not run{in_round}: {gave_up['reason']}"
                if not res["rows"]:  # not even the smallest size: nothing measured is a failure, not a limit
                    reason = f"failed{in_round}: {reason}"
                echo(f"    {reason}")
                if (
                    not res["rows"] or (spec["engine"], gave_up["batch_size"]) not in limits_noted
                ):  # a limit once, not per round
                    skipped.append({"engine": spec["engine"], "reason": reason})
                    limits_noted.add((spec["engine"], gave_up["batch_size"]))
            if failed := res.get("failed"):  # an error that is not a size limit: the sizes before it are kept
                reason = f"failed{in_round} at batch size {failed['batch_size']}: {failed['reason']}"
                echo(f"    {reason}")
                skipped.append({"engine": spec["engine"], "reason": reason})
                if number == 1:
                    failed_first.add(spec["engine"])
            if spec["engine"] == REFERENCE and not res["rows"]:
                if number == 1:
                    raise BertpackError(
                        f"the reference engine {REFERENCE} measured no batch size: {skipped[-1]['reason']}"
                    )
                return rounds  # no ratios without it: this round is dropped, the finished ones kept
        rounds.append(results)
    return rounds


def run_end_to_end(
    cfg: BenchConfig,
    artifact: Path,
    checkpoint: str,
    sentences: list,
    labels: list,
    domains: list,
    threads: int,
    device: str,
    torch_cuda: bool,
    work: Path,
    skipped: list[dict],
    echo: Callable[[str], None],
    num_labels: int = 2,
) -> dict:
    """The book's way (pad to 128, input order, PyTorch fp32 eager) against the serving path, same sentences.
    A side that fails goes to `skipped` as a failure."""
    from bertpack.metrics import scores

    n = min(cfg.e2e_count(), len(sentences))
    rows = [i * len(sentences) // n for i in range(n)]  # spread over the list, which holds both domains in order
    chosen = [sentences[i] for i in rows]
    spec = {
        "artifact_dir": str(artifact),
        "checkpoint": checkpoint,
        "threads": threads,
        "sentences": chosen,
        "e2e_batch_size": cfg.e2e_batch_size,
        "e2e_pad_to": cfg.e2e_pad_to,
        "min_time_s": cfg.min_time_s,
        "max_passes": cfg.max_passes,
        "decision": json.loads((artifact / "manifest.json").read_text()).get("decision"),
    }
    echo(f"  end to end on {n} sentences: the book's way ...")
    book = run_worker(
        {**spec, "mode": "book", "device": "cuda" if torch_cuda else "cpu"}, work, threads, cfg.worker_timeout_s
    )
    echo("  end to end: bertpack serving path ...")
    serving = run_worker({**spec, "mode": "serving", "device": device}, work, threads, cfg.worker_timeout_s)
    out = {"sentences": n, "batch_size": cfg.e2e_batch_size, "book": book, "serving": serving}
    for name, side in (("book", book), ("serving", serving)):
        if "error" in side:
            skipped.append({"engine": f"end_to_end:{name}", "reason": f"failed: {side['error']}"})
            continue
        side.update(scores([labels[i] for i in rows], side["predictions"], [domains[i] for i in rows], num_labels))
    if "error" not in book and "error" not in serving:
        out["speedup"] = serving["sentences_per_s"] / book["sentences_per_s"]
    return out
