"""The inference engine: an exported bertpack artifact run with ONNX Runtime and `tokenizers`.

No torch, no transformers: this module is what the Bento carries. `bertpack predict`, the
parity report and the benchmark's "serving path" use it too, so what is measured is what is served.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bertpack.errors import BertpackError
from bertpack.files import sha256_file

log = logging.getLogger("bertpack.engine")

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "bertpack-artifact/1"
# Sequences are padded up to one of these lengths so a few shapes repeat (ORT caches per shape;
# CUDA graphs need fixed shapes); CoLA sentences are short, so most land in 16 or 32.
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def read_manifest(artifact_dir: Path) -> dict:
    path = Path(artifact_dir) / MANIFEST
    if not Path(artifact_dir).is_dir():
        raise BertpackError(f"artifact folder {artifact_dir} does not exist; create it with `bertpack export RUN_DIR --out {artifact_dir}`")
    if not path.is_file():
        raise BertpackError(f"{artifact_dir} has no {MANIFEST}; it is not a bertpack export (run `bertpack export RUN_DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BertpackError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-run bertpack export") from None
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise BertpackError(f"{path}: unknown artifact format {manifest.get('format')!r} (expected {ARTIFACT_FORMAT})")
    return manifest


def verify_files(artifact_dir: Path, manifest: dict, names: Sequence[str] | None = None) -> None:
    """Re-hash files against the manifest (all of them, or `names`); raise on any mismatch."""
    artifact_dir = Path(artifact_dir)
    for name, meta in manifest["files"].items():
        if names is not None and name not in names:
            continue
        path = artifact_dir / name
        if not path.is_file():
            raise BertpackError(f"{path} is missing (listed in the manifest); re-run bertpack export")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise BertpackError(f"{path} is {size} bytes, the manifest says {meta['bytes']}: truncated or replaced; re-run bertpack export")
        if sha256_file(path) != meta["sha256"]:
            raise BertpackError(f"{path} does not match its sha256 in the manifest: corrupt or modified; re-run bertpack export")


def gpu_present() -> bool:
    """An NVIDIA device is visible (the driver's device nodes exist)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_available() -> bool:
    """CUDA can be asked for: onnxruntime-gpu lists its CUDA provider even where no GPU exists, and
    asking for it there logs errors, so require a visible device as well."""
    import onnxruntime as ort

    return gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return n


@dataclass
class Batch:
    """Token ids of a batch, padded to one length; `lengths` are the real token counts."""

    inputs: dict[str, np.ndarray]
    lengths: list[int] = field(default_factory=list)


class OnnxClassifier:
    """One exported variant in one ONNX Runtime session, with its tokenizer."""

    def __init__(self, artifact_dir: Path | str, variant: str | None = None, device: str = "auto",
                 threads: int | None = None, verify: bool = True, buckets: Sequence[int] | None = DEFAULT_BUCKETS):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        if device not in ("auto", "cpu", "cuda"):
            raise BertpackError(f"device must be auto, cpu or cuda, not {device!r}")
        want_cuda = device == "cuda" or (device == "auto" and cuda_available())
        self.variant = variant or self.manifest["serving_default"]["cuda" if want_cuda else "cpu"]
        variants = self.manifest["variants"]
        if self.variant not in variants:
            raise BertpackError(f"variant {self.variant!r} is not in {self.artifact_dir} (has: {', '.join(variants)})")
        model_file = variants[self.variant]["file"]
        if verify:
            verify_files(self.artifact_dir, self.manifest, [model_file, "tokenizer.json"])

        self.max_length = int(self.manifest["max_length"])
        self.labels: list[str] = list(self.manifest["labels"])
        self.buckets = tuple(b for b in (buckets or ()) if b <= self.max_length) + ((self.max_length,) if buckets else ())
        self.tokenizer = Tokenizer.from_file(str(self.artifact_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_id = int(self.manifest.get("pad_token_id", 0))

        providers: list = ["CPUExecutionProvider"]
        if want_cuda:
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.artifact_dir / model_file), sess_options=session_options(threads), providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise BertpackError(f"ONNX Runtime cannot load {self.artifact_dir / model_file}: {str(exc).splitlines()[0][:300]}") from None
        self.provider = self.session.get_providers()[0]
        if want_cuda and self.provider != "CUDAExecutionProvider":
            log.error("CUDA was requested but ONNX Runtime fell back to %s: check that the CUDA 12/13 and cuDNN libraries "
                      "are on the library path and that `onnxruntime` is not installed beside `onnxruntime-gpu`", self.provider)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        log.info("loaded %s (%s) on %s", model_file, self.variant, self.provider)

    # -- tokenization ------------------------------------------------------------------------
    def encode(self, sentences: Sequence[str], truncate: bool = True) -> list[list[int]]:
        """Token ids per sentence ([CLS] ... [SEP]); too-long input is cut to max_length or refused."""
        ids = [e.ids for e in self.tokenizer.encode_batch(list(sentences))]
        for i, seq in enumerate(ids):
            if len(seq) > self.max_length:
                if not truncate:
                    raise BertpackError(f"sentence {i} has {len(seq)} tokens, over the model's max length {self.max_length}")
                ids[i] = seq[: self.max_length - 1] + [seq[-1]]  # keep [SEP]
        return ids

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> Batch:
        """Pad a batch to `length`, or to the bucket holding its longest sentence."""
        longest = max(len(s) for s in ids)
        target = length or (bucket_length(longest, self.buckets) if self.buckets else longest)
        input_ids = np.full((len(ids), target), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), target), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            attention[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": np.zeros_like(input_ids)}
        return Batch(inputs={name: feed[name] for name in self.input_names}, lengths=[len(s) for s in ids])

    # -- inference ---------------------------------------------------------------------------
    def run(self, batch: Batch) -> np.ndarray:
        return self.session.run([self.output_name], batch.inputs)[0].astype(np.float32)

    def logits(self, sentences: Sequence[str], batch_size: int = 32, sort_by_length: bool = True, truncate: bool = True) -> np.ndarray:
        """Logits for every sentence, in input order. Sorting by length keeps padding small."""
        if not sentences:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        ids = self.encode(sentences, truncate=truncate)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort_by_length else list(range(len(ids)))
        out = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.run(self.pad([ids[i] for i in chunk]))
        return out

    def classify(self, sentences: Sequence[str], batch_size: int = 32, truncate: bool = True) -> list[dict]:
        """Label and per-label probability for each sentence."""
        logits = self.logits(sentences, batch_size=batch_size, truncate=truncate)
        probs = softmax(logits)
        return [{"label": self.labels[int(p.argmax())], "probabilities": {lab: float(p[j]) for j, lab in enumerate(self.labels)}}
                for p in probs]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
