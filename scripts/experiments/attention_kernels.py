"""Measurement probe, not the product: which ONNX Runtime attention kernel, and which embedding graph, make the
service's GPU path fastest at batch 1.

For an export's fp16 graph (`bertpack bench --arch bert-base --export-dir DIR` leaves one in DIR/artifact), each
setting runs in its own process through the bench's own CUDA-graph engine and timing loop
(bench.worker.OnnxGraphEngine, measure_batch_size: inputs staged before the clock, replay + sync timed), one sentence
per call over CoLA validation sentences. Settings: ORT's default kernel choice, then each `sdpa_kernel` backend
alone, then (with --unfused-embeddings) the default on the O4 graph without the EmbedLayerNormalization fusion,
built here from the export's model.onnx. Each line: p50, host copies, and the largest logit difference from the
default setting on the same sentences. ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 makes ORT print the kernel it picked;
the first such line of each setting is kept.

    python scripts/experiments/attention_kernels.py DIR/artifact --data CoLA --out kernels.json [--unfused-embeddings]

`--cpu` runs the same plumbing on the CPU provider (no graphs are captured; the kernels do not apply): a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# sdpa_kernel bits (onnxruntime contrib_ops attention_common.h, AttentionBackend)
SETTINGS = [("default", None), ("flash", 1), ("efficient", 2), ("trt_fused", 4), ("cudnn_flash", 8), ("math", 16),
            ("trt_flash", 32)]


def measure_one(model: Path, artifact: Path, sdpa_kernel: int | None, data: Path, sentences: int, cpu: bool) -> dict:
    """One setting, in this process: the bench's graph engine on `model` with `sdpa_kernel`."""
    import numpy as np

    from bench.worker import OnnxGraphEngine, measure_batch_size
    from bertpack.data import validation_sentences
    from serving.engine import CudaGraphs, OnnxClassifier, _open_session, preload_cuda_libraries, session_options

    options = {"device_id": 0, "enable_cuda_graph": "1"}
    if sdpa_kernel is not None:
        options["sdpa_kernel"] = str(sdpa_kernel)

    class Engine(OnnxGraphEngine):
        def __init__(self):  # the bench's engine, its graph session opened on `model` with these provider options
            # the classifier only tokenizes and pads (to the service's CUDA buckets); its own session stays unused
            self.clf = OnnxClassifier(artifact, variant="fp16", device="cpu", threads=1, verify=False, buckets=(16, 32, 64, 128))
            if not cpu:
                preload_cuda_libraries()
            providers = ["CPUExecutionProvider"] if cpu else [("CUDAExecutionProvider", options)]
            session = _open_session(model, session_options(), providers)
            self.clf.graphs = CudaGraphs(session, self.clf.input_names, self.clf.output_name, len(self.clf.labels),
                                         self.clf.pad_id, device="cpu" if cpu else "cuda")

    engine = Engine()
    texts = validation_sentences(data)[0][:sentences]
    ids = engine.clf.encode(texts)
    spec = {"ids": ids, "pad_id": engine.clf.pad_id, "input_names": engine.clf.input_names,
            "max_passes": 20, "min_time_s": 1.0, "min_samples": 200}
    row = measure_batch_size(engine, spec, 1)
    logits = np.concatenate([engine.clf.graphs.run(engine.clf.pad([s]).inputs) for s in ids[:64]])
    return {"p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"], "host_copies_p50_ms": row.get("host_copies_p50_ms"),
            "timed_calls": row["timed_calls"], "logits": logits.tolist()}


def unfused_copy(artifact: Path, work: Path) -> Path:
    """The O4 fp16 graph as Optimum builds it by default (embeddings not fused), from the export's model.onnx."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    from serving.engine import quiet_ort_logs

    src = work / "fp32"
    src.mkdir(parents=True)
    for name in ("model.onnx", "config.json"):
        (src / name).symlink_to((artifact / name).resolve())
    with quiet_ort_logs():  # the fp16 pass asks ORT for CUDA, which logs errors where it cannot load
        ORTOptimizer.from_pretrained(str(src), file_names=["model.onnx"]).optimize(
            optimization_config=AutoOptimizationConfig.O4(), save_dir=work / "unfused", file_suffix="unfused")
    return work / "unfused" / "model_unfused.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--unfused-embeddings", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: "MODEL|SDPA" -> one JSON line on stdout
    args = parser.parse_args()

    if args.one:
        model, sdpa = args.one.split("|")
        result = measure_one(Path(model), args.artifact, int(sdpa) if sdpa else None, args.data, args.sentences, args.cpu)
        print("RESULT " + json.dumps(result))
        return 0

    fused = args.artifact / "model_fp16.onnx"
    runs = [(name, fused, sdpa) for name, sdpa in SETTINGS]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.unfused_embeddings:  # built last, so a time limit cuts this one first
            runs.append(("default, embeddings unfused", None, None))
        results = []
        for name, model, sdpa in runs:
            model = model or unfused_copy(args.artifact, Path(tmp))
            cmd = [sys.executable, __file__, str(args.artifact), "--data", str(args.data), "--out", str(args.out),
                   "--sentences", str(args.sentences), "--one", f"{model}|{'' if sdpa is None else sdpa}", *(["--cpu"] if args.cpu else [])]
            env = {**os.environ, "ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            lines = (proc.stdout + proc.stderr).splitlines()
            found = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
            kernel = next((line.strip() for line in lines if "Kernel=" in line or "AttentionKernel" in line), None)
            entry = {"setting": name, "sdpa_kernel": sdpa, "model": str(model), "kernel_debug": kernel}
            if proc.returncode != 0 or not found:
                text = [line.strip() for line in lines if line.strip() and line.strip() != "\x1b[m"]
                entry["error"] = (next((t for t in reversed(text) if "Error" in t or "error" in t), None)
                                  or (text[-1] if text else f"exit {proc.returncode}"))[:300]
            else:
                entry.update(found[0])
            results.append(entry)
            args.out.write_text(json.dumps([{k: v for k, v in r.items() if k != "logits"} for r in results], indent=2))
    base = next((r for r in results if r["setting"] == "default" and "logits" in r), None)
    print(f"{'setting':<28} {'p50 ms':>8} {'p95 ms':>8} {'copies ms':>9} {'max |dlogit|':>12}  kernel")
    for r in results:
        if "error" in r:
            print(f"{r['setting']:<28} failed: {r['error']}")
            continue
        diff = None
        if base is not None:
            diff = max(abs(a - b) for row_a, row_b in zip(r["logits"], base["logits"]) for a, b in zip(row_a, row_b))
        r["max_abs_logit_diff_vs_default"] = diff
        copies = r["host_copies_p50_ms"]
        print(f"{r['setting']:<28} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} {copies if copies is None else f'{copies:.3f}':>9} "
              f"{diff if diff is None else f'{diff:.4f}':>12}  {r['kernel_debug'] or '-'}")
    for r in results:
        r.pop("logits", None)
    args.out.write_text(json.dumps(results, indent=2))
    return 0 if base is not None else 1


if __name__ == "__main__":
    sys.exit(main())
