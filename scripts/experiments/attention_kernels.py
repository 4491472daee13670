"""Measurement probe, not the product: which ONNX Runtime attention kernel, and which embedding graph, make the
service's GPU path fastest at batch 1.

For an export's fp16 graph (`bertpack bench --arch bert-base --export-dir DIR` leaves one in DIR/artifact), each
setting runs in its own process through the bench's own CUDA-graph engine and timing loop
(bench.worker.OnnxGraphEngine with `cuda_options`, measure_batch_size), one sentence per call over CoLA validation
sentences. Settings: ORT's default kernel choice, then each `sdpa_kernel` backend alone, then (with
--unfused-embeddings) the default on the O4 graph as Optimum builds it (embeddings not fused), built here from the
export's model.onnx. Each line: p50 of the model call, p50 with the host copies, the largest logit difference from
the default setting on the same sentences, and the kernels ORT reports picking (ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO).

    python scripts/experiments/attention_kernels.py DIR/artifact --data CoLA --out kernels.json [--unfused-embeddings]

`--cpu` runs the same plumbing on the CPU provider (no graphs are captured; the kernels do not apply): a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# sdpa_kernel bits (onnxruntime contrib_ops attention_common.h, AttentionBackend); None = ORT's own choice
SETTINGS = [
    ("default", None),
    ("flash", 1),
    ("efficient", 2),
    ("trt_fused", 4),
    ("cudnn_flash", 8),
    ("math", 16),
    ("trt_flash", 32),
]
PER_SETTING_S = 60
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def measure_one(artifact: Path, sdpa_kernel: int | None, data: Path, sentences: int, cpu: bool) -> dict:
    """One setting, in this process: the bench's graph engine on the artifact's fp16 model."""
    import numpy as np

    from bench.worker import OnnxGraphEngine, measure_batch_size
    from bertpack.data import validation_sentences
    from serving.engine import OnnxClassifier, physical_cores
    from serving.cuda import CudaGraphs

    if cpu:

        class Engine(OnnxGraphEngine):  # the same class on a CPU session and CPU buffers
            def __init__(self):
                self.clf = OnnxClassifier(
                    artifact, variant="fp16", device="cpu", verify=False, buckets=(16, 32, 64, 128)
                )
                self.clf.graphs = CudaGraphs(
                    self.clf.session,
                    self.clf.input_names,
                    self.clf.output_name,
                    len(self.clf.labels),
                    self.clf.pad_id,
                    device="cpu",
                )

        engine = Engine()
    else:
        engine = OnnxGraphEngine(
            str(artifact), physical_cores(), None if sdpa_kernel is None else {"sdpa_kernel": str(sdpa_kernel)}
        )
    ids = engine.clf.encode(validation_sentences(data)[0][:sentences])
    spec = {
        "ids": ids,
        "pad_id": engine.clf.pad_id,
        "input_names": engine.clf.input_names,
        "max_passes": 20,
        "min_time_s": 1.0,
        "min_samples": 200,
    }
    row = measure_batch_size(engine, spec, 1)
    logits = np.concatenate([engine.clf.graphs.run(engine.clf.pad([s]).inputs) for s in ids[:64]])
    return {
        "p50_ms": row["p50_ms"],
        "p95_ms": row["p95_ms"],
        "p50_with_copies_ms": row.get("p50_with_copies_ms"),
        "timed_calls": row["timed_calls"],
        "logits": logits.tolist(),
    }


def unfused_artifact(artifact: Path, work: Path) -> Path:
    """A copy of the artifact (links) whose model_fp16.onnx is O4 as Optimum builds it: embeddings not fused."""
    from export.optimize import GPU_LEVEL, optimize

    model, _ = optimize(artifact, work, GPU_LEVEL, options={})
    out = work / "artifact"
    out.mkdir()
    for f in artifact.iterdir():
        (out / f.name).symlink_to(model if f.name == "model_fp16.onnx" else f.resolve())
    return out


def run_setting(args, name: str, artifact: Path, sdpa: int | None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        str(artifact),
        "--data",
        str(args.data),
        "--out",
        str(args.out),
        "--sentences",
        str(args.sentences),
        "--one",
        "" if sdpa is None else str(sdpa),
        *(["--cpu"] if args.cpu else []),
    ]
    entry: dict = {"setting": name, "sdpa_kernel": sdpa, "artifact": str(artifact)}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=PER_SETTING_S,
            env={**os.environ, "ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"},
        )
    except subprocess.TimeoutExpired:
        return {**entry, "error": f"timed out after {PER_SETTING_S} s"}
    lines = [ANSI.sub("", line).strip() for line in (proc.stdout + proc.stderr).splitlines()]
    lines = [line for line in lines if line]
    # ORT prints "... SdpaKernel=<kernel>" per attention node and shape; the options summary line has no "SdpaKernel="
    entry["kernels"] = sorted({m.group(1) for line in lines for m in [re.search(r"SdpaKernel=(\S+)", line)] if m})
    found = [json.loads(line[len("RESULT ") :]) for line in lines if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        entry["error"] = (
            next((t for t in reversed(lines) if "rror" in t), None)
            or (lines[-1] if lines else f"exit {proc.returncode}")
        )[:300]
        return entry
    return {**entry, **found[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--unfused-embeddings", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument(
        "--one", help=argparse.SUPPRESS
    )  # worker mode: one setting ("" or an sdpa_kernel) -> a RESULT line
    args = parser.parse_args()

    if args.one is not None:
        result = measure_one(args.artifact, int(args.one) if args.one else None, args.data, args.sentences, args.cpu)
        print("RESULT " + json.dumps(result))
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = [(name, sdpa) for name, sdpa in SETTINGS] + (
        [("default, embeddings unfused", None)] if args.unfused_embeddings else []
    )
    results: list[dict] = []
    base_logits = None
    print(f"{'setting':<28} {'p50 ms':>8} {'+copies':>8} {'max |dlogit|':>12}  kernels", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, sdpa in runs:  # the unfused graph is built last, so a time limit cuts it first
            artifact = args.artifact
            if name.endswith("unfused"):
                try:
                    artifact = unfused_artifact(args.artifact, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - a probe: report and stop
                    results.append({"setting": name, "error": f"building the unfused graph: {exc}"[:300]})
                    print(f"{name:<28} failed: {results[-1]['error']}", flush=True)
                    break
            r = run_setting(args, name, artifact, sdpa)
            logits = r.pop("logits", None)
            if name == "default":
                base_logits = logits
            if logits is not None and base_logits is not None:
                r["max_abs_logit_diff_vs_default"] = max(
                    abs(a - b) for x, y in zip(logits, base_logits) for a, b in zip(x, y)
                )
            results.append(r)
            args.out.write_text(json.dumps(results, indent=2))
            if "error" in r:
                print(f"{name:<28} failed: {r['error']}", flush=True)
                continue
            diff, copies = r.get("max_abs_logit_diff_vs_default"), r["p50_with_copies_ms"]
            print(
                f"{name:<28} {r['p50_ms']:>8.3f} {'-' if copies is None else f'{copies:.3f}':>8} "
                f"{'-' if diff is None else f'{diff:.4f}':>12}  {', '.join(r['kernels']) or '-'}",
                flush=True,
            )
    return 0 if base_logits is not None else 1


if __name__ == "__main__":
    sys.exit(main())
