"""One engine measured in its own process: `python -m bench.worker SPEC.json RESULT.json`.

A process per engine, because torch's and ONNX Runtime's thread pools in one process compete for
the same cores and distort both. The spec (written by bench.runner) holds the token ids; the
batches are rebuilt here by bench.batches, identically for every engine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from bench.batches import make_batches
from bertpack.files import write_json_atomic
from bertpack.postprocess import Decision, decide

T = TypeVar("T")


class TooLarge(Exception):
    """A batch over what the engine takes (the CUDA-graph engine's largest graph batch)."""


def _peak_rss_mib() -> float:
    """This process's own peak RSS. Linux carries ru_maxrss across exec, so a worker's ru_maxrss starts at the
    size of the parent that spawned it; VmHWM belongs to the worker's own address space."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)


def _staged_for(staged: tuple, prepared) -> tuple:
    """What stage() made of `prepared`; run() on any other batch would answer for the staged one."""
    if staged[0] is not prepared:
        raise RuntimeError("run() without stage() of the same batch: it would answer for another batch")
    return staged[1:]


class TorchEngine:
    """PyTorch from the fine-tuned checkpoint. mode fp32 = the book's way (eager, no_grad, fp32);
    fast = inference_mode (+ fp16 autocast on CUDA); bf16 = bf16 autocast; fp16 = the weights cast
    to fp16 (`model.half()`, CUDA only), the strongest plain-PyTorch baseline for the ONNX fp16 path.
    On CUDA each call's inputs go to the device in stage(), before the clock, and its logits come back
    in to_numpy(), after it; the worker times the call with them too (p50_with_copies_ms)."""

    def __init__(self, checkpoint: str, mode: str, device: str, threads: int):
        import torch

        from bertpack.models import load_classifier

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch, self.mode, self.device = torch, mode, device
        self.model = load_classifier(checkpoint).eval().to(device)
        if mode == "fp16":
            self.model = self.model.half()
        self.size_bytes = sum(p.stat().st_size for p in Path(checkpoint).glob("*.safetensors"))
        self.info = {
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "torch_threads": torch.get_num_threads(),
        }
        if device == "cuda":
            self.info["gpu"] = torch.cuda.get_device_name(0)
        self.host_copies = device == "cuda"

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict:
        return {k: self.torch.from_numpy(v) for k, v in inputs.items()}

    def _context(self):
        import contextlib

        torch = self.torch
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad() if self.mode == "fp32" else torch.inference_mode())
        if self.mode == "fast" and self.device == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
        elif self.mode == "bf16":
            stack.enter_context(torch.autocast(self.device, dtype=torch.bfloat16))
        return stack

    def stage(self, prepared: dict) -> None:
        self._staged = (prepared, {k: v.to(self.device) for k, v in prepared.items()})  # on the CPU: the same tensors

    def run(self, prepared: dict) -> Any:
        (on_device,) = _staged_for(self._staged, prepared)
        with self._context():
            return self.model(**on_device).logits

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()  # kernels are asynchronous: read the clock only after they finish

    def to_numpy(self, out) -> np.ndarray:
        return out.float().cpu().numpy()

    def reset_peak(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        peak = {"peak_rss_mib": _peak_rss_mib()}
        if self.device == "cuda":
            peak["cuda_max_allocated_mib"] = self.torch.cuda.max_memory_allocated() / 2**20
        return peak


class OnnxGraphEngine:
    """The serving engine's CUDA-graph path (serving.cuda.CudaGraphs) on the fp16 model: each batch
    padded to its length bucket (graphs need repeating shapes; the other engines pad to the batch's
    longest, so this one does at least as much work) and its rows to a graph batch size.

    Timed like every GPU row: inputs on the device before the clock starts, logits left there, the
    clock read after the GPU finished. The graph has fixed input tensors, so a batch is copied into
    them just before its call (`stage`) and the logits copied out after it (`to_numpy`); the worker
    also times each call with those copies, as the service pays it, and reports that beside the row
    (p50_with_copies_ms)."""

    warmup_runs = 3  # ORT runs a shape normally before it captures its graph
    host_copies = True

    def __init__(self, artifact_dir: str, threads: int, cuda_options: dict[str, str] | None = None):
        from serving.engine import OnnxClassifier, served_buckets

        self.clf = OnnxClassifier(
            artifact_dir,
            variant="fp16",
            device="cuda",
            threads=threads,
            verify=False,
            buckets=served_buckets("cuda"),
            cuda_graph=True,
            cuda_options=cuda_options,
        )
        if self.clf.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime fell back to {self.clf.provider}")
        if self.clf.graphs is None:
            raise RuntimeError(f"no CUDA graphs for the fp16 model: {self.clf.graph_error}")
        self.model_path = self.clf.model_path
        self.size_bytes = self.model_path.stat().st_size
        self.info = {
            "provider": self.clf.provider,
            "model_file": str(self.model_path),
            "cuda_graph": True,
            "length_buckets": list(self.clf.buckets),
            "graph_batches": list(self.clf.graphs.BATCHES),
        }

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from serving.cuda import bucket_length

        n, length = inputs["input_ids"].shape
        if not self.clf.graphs.fits(n, bucket_length(length, self.clf.buckets)):
            raise TooLarge(
                f"batch {n} is over the largest CUDA-graph batch {self.clf.graphs.BATCHES[-1]} (the service's limit)"
            )
        lengths = inputs["attention_mask"].sum(axis=1)
        rows = [inputs["input_ids"][i, : lengths[i]].tolist() for i in range(n)]
        return self.clf.pad(rows).inputs

    def stage(self, prepared: dict[str, np.ndarray]) -> None:
        self._staged = (prepared, *self.clf.graphs.stage(prepared))

    def run(self, prepared: dict[str, np.ndarray]):
        slot, n = _staged_for(self._staged, prepared)
        self.clf.graphs.replay(slot)
        return slot, n

    def sync(self) -> None:
        self._staged[1].binding.synchronize_outputs()

    def to_numpy(self, out) -> np.ndarray:
        return self.clf.graphs.fetch(*out)

    def reset_peak(self) -> None:
        pass

    def peak(self) -> dict:
        return {"peak_rss_mib": _peak_rss_mib()}


class OnnxEngine:
    """One ONNX model in ONNX Runtime, with the serving engine's session options. On CUDA the inputs
    and outputs are bound to the device (IO binding): stage() copies a batch there before the clock,
    to_numpy() copies the logits back after it, and the worker times the call with them too."""

    def __init__(self, model_path: str, device: str, threads: int, settings: dict | None = None):
        import onnxruntime as ort

        from serving.engine import session_options
        from serving.cuda import preload_cuda_libraries

        providers: list = ["CPUExecutionProvider"]
        cuda_libraries = None
        if device == "cuda":
            preload_cuda_libraries()  # as the service does, so the worker's peak memory is the service's (no torch)
            providers, cuda_libraries = (
                [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
                "preload_dlls",
            )
        self.model_path = Path(model_path)
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=session_options(threads), providers=providers
        )
        provider = self.session.get_providers()[0]
        if device == "cuda" and provider != "CUDAExecutionProvider":
            import torch  # noqa: F401 - last resort: torch's CUDA libraries in the process (counted in peak memory)

            cuda_libraries = "torch"
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=session_options(threads), providers=providers
            )
            provider = self.session.get_providers()[0]
        if device == "cuda" and provider != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime fell back to {provider}")
        self.device = device
        self.output_name = self.session.get_outputs()[0].name
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.size_bytes = self.model_path.stat().st_size
        self.info = {
            "provider": provider,
            "model_file": str(self.model_path),
            "intra_op_threads": threads,
            "variant_settings": settings,
            "cuda_libraries": cuda_libraries,
        }
        self.host_copies = device == "cuda"

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in inputs.items() if k in self.input_names}

    def stage(self, prepared: dict[str, np.ndarray]) -> None:
        if self.device != "cuda":
            self._staged = (prepared, prepared)
            return
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, arr in prepared.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        binding.bind_output(self.output_name, "cuda", 0)
        self._staged = (prepared, binding)

    def run(self, prepared):
        (fed,) = _staged_for(self._staged, prepared)
        if self.device == "cuda":
            self.session.run_with_iobinding(fed)
            return fed
        return self.session.run([self.output_name], fed)[0]

    def sync(self) -> None:
        pass  # run_with_iobinding returns after the CUDA stream is synchronised; CPU runs are synchronous

    def to_numpy(self, out) -> np.ndarray:
        if self.device == "cuda":
            return out.copy_outputs_to_cpu()[0].astype(np.float32)
        return np.asarray(out, dtype=np.float32)

    def reset_peak(self) -> None:
        pass

    def peak(self) -> dict:
        return {"peak_rss_mib": _peak_rss_mib()}


def labels_of(logits: np.ndarray, spec: dict) -> np.ndarray:
    """Label indices at the artifact's decision (its temperature and threshold), as predict and the service label."""
    return decide(logits, Decision.from_record(spec.get("decision"), logits.shape[-1]))[0]


def load_engine(spec: dict):
    engine, device, threads = spec["engine"], spec["device"], spec["threads"]
    if engine.startswith("pytorch_"):
        mode = {"pytorch_fp32": "fp32", "pytorch_fast": "fast", "pytorch_bf16": "bf16", "pytorch_fp16": "fp16"}[engine]
        return TorchEngine(spec["checkpoint"], mode, device, threads)
    if engine == "onnx_fp16_cuda_graph":
        return OnnxGraphEngine(spec["artifact_dir"], threads)
    return OnnxEngine(spec["model_file"], device, threads, spec.get("settings"))


def measure_batch_size(engine, spec: dict, batch_size: int) -> dict:
    batches = make_batches(spec["ids"], batch_size, spec["pad_id"], spec["input_names"])
    prepared = [engine.prepare(b.inputs) for b in batches]
    n = sum(len(b.rows) for b in batches)
    engine.reset_peak()
    # Warm-up: one full pass runs every shape once (ORT and torch plan per shape); its logits give the MCC.
    preds = np.empty(n, dtype=np.int64)
    t0 = time.perf_counter()
    for b, p in zip(batches, prepared):
        for _ in range(getattr(engine, "warmup_runs", 1)):
            engine.stage(p)
            out = engine.run(p)
            engine.sync()
        preds[b.rows] = labels_of(engine.to_numpy(out), spec)
    warmup_s = time.perf_counter() - t0
    # The clock covers run + sync only: stage() puts each batch where the model reads it (on a GPU: copies it to
    # the device) before the clock starts, and the logits stay where the model left them. GPU engines are also
    # timed per call with those copies and the logits' copy back to the host (with_copies).
    copies = getattr(engine, "host_copies", False)
    times: list[float] = []
    with_copies: list[float] = []
    passes = 0
    while passes < 1 or (
        passes < spec["max_passes"] and (sum(times) < spec["min_time_s"] or len(times) < spec["min_samples"])
    ):
        for p in prepared:
            staged = time.perf_counter()
            engine.stage(p)
            start = time.perf_counter()
            out = engine.run(p)
            engine.sync()
            end = time.perf_counter()
            times.append(end - start)
            if copies:
                engine.to_numpy(out)
                with_copies.append(time.perf_counter() - staged)
        passes += 1
    ms = np.asarray(times) * 1000
    result = {
        "batch_size": batch_size,
        "batches": len(batches),
        "passes": passes,
        "timed_calls": len(times),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "sentences_per_s": passes * n / float(np.sum(times)),
        "warmup_s": warmup_s,
        "predictions": preds.tolist(),
        **engine.peak(),
    }
    if copies:
        result["p50_with_copies_ms"] = float(np.percentile(np.asarray(with_copies) * 1000, 50))
    return result


def _does_not_fit(exc: BaseException) -> bool:
    """Out of memory (host or device), or over the engine's own batch limit: larger sizes will not fit either.
    Any other error is the engine failing, and is reported as a failure."""
    if isinstance(exc, (MemoryError, TooLarge)) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    text = str(exc).lower()  # ORT's CUDA allocator: "Failed to allocate memory ..." / "CUDA failure 2: out of memory"
    return "failed to allocate memory" in text or "out of memory" in text


def run_batches(spec: dict) -> dict:
    """Every batch size in increasing order; stops at the first that does not fit ("skipped") or fails ("failed"),
    keeping the sizes measured before it."""
    t0 = time.perf_counter()
    engine = load_engine(spec)
    out = {
        "engine": spec["engine"],
        "device": spec["device"],
        "threads": spec["threads"],
        "load_s": time.perf_counter() - t0,
        "rss_after_load_mib": _peak_rss_mib(),
        "model_bytes": engine.size_bytes,
        "info": engine.info,
        "rows": [],
        "skipped": [],
    }
    for batch_size in spec["batch_sizes"]:
        try:
            out["rows"].append(measure_batch_size(engine, spec, batch_size))
        except Exception as exc:  # noqa: BLE001 - sorted into "does not fit" and "failed" below
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            if _does_not_fit(exc):
                out["skipped"].append({"batch_size": batch_size, "reason": reason})
            else:
                out["failed"] = {"batch_size": batch_size, "reason": reason}
            break
    # The per-operator profile opens a second session; after the timed sizes, so their peak memory is the engine's own.
    row = next((r for r in out["rows"] if r["batch_size"] == spec.get("profile_batch_size")), None)
    if row is not None and isinstance(engine, OnnxEngine) and engine.device == "cpu":
        from bench.profile import profile_session

        batches = make_batches(spec["ids"], row["batch_size"], spec["pad_id"], spec["input_names"])
        row["profile"] = profile_session(
            engine.model_path,
            spec["threads"],
            [engine.prepare(b.inputs) for b in batches],
            engine.output_name,
            Path(spec["profile_dir"]),
        )
    return out


def _timed_passes(one_pass: Callable[[], T], spec: dict) -> tuple[list[float], T]:
    """Both sides of the end-to-end comparison: whole passes, timed, until `min_time_s` (at least one, at most
    `max_passes`; a CPU pass takes seconds, a GPU pass tens of ms); the times and the last pass's result."""
    times: list[float] = []
    while not times or (len(times) < spec["max_passes"] and sum(times) < spec["min_time_s"]):
        t0 = time.perf_counter()
        result = one_pass()
        times.append(time.perf_counter() - t0)
    return times, result


def run_book(spec: dict) -> dict:
    """The book's way, end to end: tokenizer pads every sentence to 128, input order, PyTorch fp32 eager."""
    import torch

    from bertpack.models import load_tokenizer

    engine = TorchEngine(spec["checkpoint"], "fp32", spec["device"], spec["threads"])
    tok = load_tokenizer(spec["checkpoint"])
    sentences, bs, length = spec["sentences"], spec["e2e_batch_size"], spec["e2e_pad_to"]

    def batch_logits(chunk: list[str]) -> np.ndarray:
        enc = tok(chunk, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        with torch.no_grad():
            logits = engine.model(**{k: v.to(engine.device) for k, v in enc.items()}).logits
        engine.sync()
        return logits.float().cpu().numpy()

    batch_logits(sentences[:bs])  # warm-up: the only shape is (bs, 128), plus a shorter last batch
    if len(sentences) % bs:
        batch_logits(sentences[: len(sentences) % bs])
    preds = np.empty(len(sentences), dtype=np.int64)

    def one_pass() -> None:
        for start in range(0, len(sentences), bs):
            preds[start : start + bs] = labels_of(batch_logits(sentences[start : start + bs]), spec)

    times, _ = _timed_passes(one_pass, spec)
    seconds = float(np.median(times))
    return {
        "engine": "book",
        "device": spec["device"],
        "threads": spec["threads"],
        "sentences": len(sentences),
        "batch_size": bs,
        "pad_to": length,
        "seconds": seconds,
        "sentences_per_s": len(sentences) / seconds,
        "predictions": preds.tolist(),
        "passes": len(times),
        "peak_rss_mib": _peak_rss_mib(),
        "info": engine.info,
    }


def run_serving(spec: dict) -> dict:
    """bertpack's serving path, end to end: OnnxClassifier (tokenize, sort, bucket, the manifest's
    default model for this device)."""
    from serving.engine import OnnxClassifier, served_buckets

    device = spec["device"]
    # As serving/service.py builds it: on CPU each batch padded to its longest (buckets on GPU), idle threads not
    # spinning.
    on_gpu = device == "cuda"
    clf = OnnxClassifier(
        spec["artifact_dir"],
        device=device,
        threads=spec["threads"],
        verify=False,
        buckets=served_buckets(device),
        cuda_graph=on_gpu,
        spin=False,
    )
    sentences, bs = spec["sentences"], spec["e2e_batch_size"]
    for _ in range(3 if clf.graphs else 1):  # warm-up: every bucket shape (CUDA graphs: captured on the third run)
        clf.logits(sentences, batch_size=bs)
    times, logits = _timed_passes(lambda: clf.logits(sentences, batch_size=bs), spec)
    seconds = float(np.median(times))
    return {
        "engine": "serving",
        "device": device,
        "threads": spec["threads"],
        "variant": clf.variant,
        "provider": clf.provider,
        "cuda_graphs": clf.graphs is not None,
        "sentences": len(sentences),
        "batch_size": bs,
        "buckets": list(clf.buckets),
        "passes": len(times),
        "seconds": seconds,
        "sentences_per_s": len(sentences) / seconds,
        "predictions": decide(logits, clf.decision)[0].tolist(),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _exit_with_parent() -> None:
    """Linux: end this worker when the bench process dies (e.g. Ctrl-C), rather than leave it running."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _exit_with_parent()
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mode = spec.get("mode", "batches")
    result = {"batches": run_batches, "book": run_book, "serving": run_serving}[mode](spec)
    write_json_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
