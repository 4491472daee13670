"""The inference engine: an exported bertpack artifact run with ONNX Runtime and `tokenizers`.

No torch, no transformers: this module is what the Bento carries. `bertpack predict`, the
parity report and the benchmark's "serving path" use it too, so what is measured is what is served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from bertpack.errors import BertpackError, first_line
from bertpack.manifest import left_out, read_manifest, verify_files
from bertpack.machine import VNNI_FLAGS, X86_MACHINES, cpu_flags, cpu_model
from bertpack.postprocess import Decision, label_ids, probabilities
from serving import cuda
from serving.cuda import CudaGraphs, bucket_length

log = logging.getLogger("bertpack.engine")

# Sequences are padded up to one of these lengths so a few shapes repeat (ORT caches per shape;
# CUDA graphs need fixed shapes); CoLA sentences are short, so most land in 16 or 32.
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


# x86 CPUs whose u8s8 int8 products are exact; without these, ONNX Runtime's u8s8 kernels (VPMADDUBSW) sum pairs into
# int16 with saturation, which is what reduce_range (7-bit weights) or u8u8 weights (the avx2 preset) avoid.
EXACT_U8S8_FLAGS = VNNI_FLAGS | {"amx_int8"}


def int8_kernel_warning(
    manifest: dict, variant: str, artifact_dir: Path | str, cpuinfo: Path = Path("/proc/cpuinfo")
) -> str | None:
    """Why this CPU may not reproduce the export's int8 parity figures (None when it does, or `variant` is not int8):
    u8s8 weights quantized without reduce_range, measured on a CPU with exact int8 products (VNNI, or ARM), now on an
    x86 CPU without VNNI, where the same model can saturate and predict otherwise."""
    settings = manifest["variants"][variant].get("settings") or {}
    if settings.get("target") not in ("avx512", "avx512_vnni", "arm64") or settings.get("reduce_range", True):
        return None  # not int8, u8u8 weights (avx2 preset), or 7-bit weights: no saturation anywhere
    if platform.machine().lower() not in X86_MACHINES or EXACT_U8S8_FLAGS & cpu_flags(cpuinfo):
        return None
    exported_on = manifest.get("cpu_flags") or {}
    if exported_on.get("machine", "").lower() in X86_MACHINES and exported_on.get("vnni") is False:
        return None  # measured on the same kind of kernels as this CPU's
    return (
        f"{variant} holds u8s8 int8 weights quantized without reduce_range ({settings['target']} preset, parity "
        "measured on "
        f"{exported_on.get('model') or 'another CPU'}); this CPU ({cpu_model(cpuinfo)}) has no VNNI, where ONNX "
        "Runtime's "
        "u8s8 kernels can saturate and predict otherwise: check it here with `bertpack verify --parity "
        f"{artifact_dir}`, "
        "serve BERTPACK_VARIANT=optimized, or re-export with --quant-target avx2 for CPUs without VNNI"
    )


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def session_options(threads: int | None = None, spin: bool = True):
    """`spin=False` stops idle ORT threads from busy-waiting: in a server they would take the CPU
    that the HTTP side needs between batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def served_buckets(device: str) -> tuple[int, ...] | None:
    """How the service pads each run: to a few bucket lengths on CUDA (CUDA graphs need repeating
    shapes), to the batch's longest sentence on the CPU (less padding: faster on short sentences)."""
    return DEFAULT_BUCKETS if device == "cuda" else None


@contextlib.contextmanager
def quiet_ort_logs():
    """Silence ONNX Runtime's default logger for a block: asking for a provider that cannot load
    (CUDA without a GPU, TensorRT without its libraries) logs errors that are expected there."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # ORT's default: warnings


def length_order(ids: Sequence[Sequence[int]]) -> list[int]:
    """Sentence positions sorted by token count (stable), so a batch holds sentences of similar length."""
    return sorted(range(len(ids)), key=lambda i: len(ids[i]))


def pad_ids(
    ids: Sequence[Sequence[int]], pad_id: int, input_names: Sequence[str], length: int | None = None
) -> dict[str, np.ndarray]:
    """The model's inputs for token-id sequences padded to `length` (default: the longest), one row each."""
    target = length or max(len(s) for s in ids)
    input_ids = np.full((len(ids), target), pad_id, dtype=np.int64)
    attention = np.zeros((len(ids), target), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
    feed = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": np.zeros_like(input_ids)}
    return {name: feed[name] for name in input_names}


def keep_within(ids: list[int], limit: int) -> list[int]:
    """Token ids over `limit` cut to their first limit - 1 and the final [SEP]; shorter ones as they are."""
    return ids if len(ids) <= limit else ids[: limit - 1] + [ids[-1]]


@dataclass
class Encoded:
    """Sentences tokenized for the model: `ids` within `limit`, `tokens` the counts before the cut,
    `unreadable` the indices of sentences with no token the vocabulary knows."""

    ids: list[list[int]]
    tokens: list[int]
    limit: int
    unreadable: list[int]

    @property
    def truncated(self) -> list[bool]:
        return [n > self.limit for n in self.tokens]

    @property
    def too_long(self) -> list[tuple[int, int]]:
        """(index, token count) of each sentence over the limit."""
        return [(i, n) for i, n in enumerate(self.tokens) if n > self.limit]


@dataclass
class Batch:
    """Token ids of a batch, padded to one length; `lengths` are the real token counts."""

    inputs: dict[str, np.ndarray]
    lengths: list[int] = field(default_factory=list)


class OnnxClassifier:
    """One exported variant in one ONNX Runtime session, with its tokenizer."""

    def __init__(
        self,
        artifact_dir: Path | str,
        variant: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        buckets: Sequence[int] | None | str = "served",
        cuda_graph: bool = False,
        spin: bool = True,
        cuda_options: dict[str, str] | None = None,
    ):
        """`buckets="served"` pads as the service does on the provider in use (served_buckets), so
        predict, parity and the service compute the same thing for the same sentences. `cuda_options`:
        extra CUDA provider options for its CUDA sessions (e.g. {"sdpa_kernel": "2"}); ORT refuses unknown ones."""
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        if device not in ("auto", "cpu", "cuda"):
            raise BertpackError(f"device must be auto, cpu or cuda, not {device!r}")
        if device == "cuda" and cuda.cuda_problem():
            raise BertpackError(f"device cuda was asked for, but {cuda.cuda_problem()}; use device auto or cpu")
        want_cuda = cuda.uses_cuda(device)
        if device == "auto" and not want_cuda and cuda.gpu_present():
            # A GPU is visible, so CUDA was expected: never fall back to the CPU silently.
            log.error("a GPU is visible but ONNX Runtime cannot use it, serving on the CPU: %s", cuda.cuda_problem())
        self.variant = variant or self.manifest["serving_default"]["cuda" if want_cuda else "cpu"]
        variants = self.manifest["variants"]
        if self.variant not in variants:
            if missing := left_out(self.manifest, self.variant):
                raise BertpackError(
                    f"variant {self.variant!r} ({missing[0]}) was left out of {self.artifact_dir}, the model store's "
                    "copy "
                    f"of the export; use the export's folder, which has every variant: {missing[1]}"
                )
            raise BertpackError(f"variant {self.variant!r} is not in {self.artifact_dir} (has: {', '.join(variants)})")
        model_file = variants[self.variant]["file"]
        if verify:
            verify_files(self.artifact_dir, self.manifest, [model_file, "tokenizer.json"])

        self.max_length = int(self.manifest["max_length"])
        self.labels: list[str] = list(self.manifest["labels"])
        # The temperature and threshold the export recorded: every caller's labels and probabilities go through it.
        self.decision = Decision.from_record(self.manifest.get("decision"), len(self.labels))
        self.tokenizer = load_tokenizer(self.artifact_dir)
        self.pad_id = int(self.manifest.get("pad_token_id", 0))
        self.unk_id: int | None = self.tokenizer.token_to_id("[UNK]")

        self.model_path = self.artifact_dir / model_file
        providers: list = ["CPUExecutionProvider"]
        if want_cuda:
            cuda.preload_cuda_libraries()
            providers = [("CUDAExecutionProvider", {"device_id": 0, **(cuda_options or {})}), "CPUExecutionProvider"]
        self.session = _open_session(self.model_path, session_options(threads, spin), providers)
        self.provider = self.session.get_providers()[0]
        if want_cuda and self.provider != "CUDAExecutionProvider":
            why = cuda.cuda_problem() or "its CUDA provider failed to initialise; see the ONNX Runtime log above"
            if device == "cuda":
                raise BertpackError(
                    f"device cuda was asked for, but ONNX Runtime could not use CUDA ({why}); check the CUDA and "
                    "cuDNN libraries with `bertpack doctor`, or use device auto or cpu"
                )
            log.error(
                "CUDA was expected but ONNX Runtime fell back to %s (%s): check that the CUDA 12/13 and cuDNN "
                "libraries "
                "are on the library path and that `onnxruntime` is not installed beside `onnxruntime-gpu`",
                self.provider,
                why,
            )
            if variant is None and self.variant != self.manifest["serving_default"]["cpu"]:
                # The CUDA default (fp16) is the GPU's model: on the CPU serve the CPU default instead.
                self.variant = self.manifest["serving_default"]["cpu"]
                model_file = variants[self.variant]["file"]
                if verify:
                    verify_files(self.artifact_dir, self.manifest, [model_file])
                self.model_path = self.artifact_dir / model_file
                self.session = _open_session(self.model_path, session_options(threads, spin), ["CPUExecutionProvider"])
                self.provider = self.session.get_providers()[0]
        if buckets == "served":
            buckets = served_buckets(self.runs_on)
        self.buckets = tuple(
            sorted({b for b in (buckets or ()) if b <= self.max_length} | ({self.max_length} if buckets else set()))
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.graphs: CudaGraphs | None = None
        self.graph_error: str | None = None  # why CUDA graphs were asked for and are not used
        if cuda_graph and self.provider == "CUDAExecutionProvider":
            try:
                session = _open_session(
                    self.model_path,
                    session_options(threads),
                    [("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1", **(cuda_options or {})})],
                )
                self.graphs = CudaGraphs(session, self.input_names, self.output_name, len(self.labels), self.pad_id)
            except BertpackError as exc:
                self.graph_error = str(exc)
                log.error("CUDA graphs unavailable (%s); using IO binding without graphs", exc)
        log.info(
            "loaded %s (%s) on %s%s",
            model_file,
            self.variant,
            self.provider,
            " with CUDA graphs" if self.graphs else "",
        )

    @property
    def runs_on(self) -> str:
        """The device the session really runs on ("cuda" or "cpu"), whatever was asked for."""
        return "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def made_for_another_device(self) -> str | None:
        """The device this variant was made for, when the session runs on the other one (fp16 on the CPU, int8 on
        CUDA: it works, slower than that device's default); None when it runs where it was made for."""
        meta = self.manifest["variants"][self.variant]
        made_for = meta.get("for", "cpu" if "method" in meta else None)  # int8_<method> lacked "for" in older exports
        return made_for if made_for in ("cpu", "cuda") and made_for != self.runs_on else None

    def int8_kernel_warning(self) -> str | None:
        """int8_kernel_warning for this session's variant, when it runs on the CPU."""
        if self.runs_on == "cuda":
            return None
        return int8_kernel_warning(self.manifest, self.variant, self.artifact_dir)

    # -- tokenization ------------------------------------------------------------------------
    def prepare(self, sentences: Sequence[str]) -> Encoded:
        """The sentences as predict and the service run them: ids cut to max_length, with what was cut and
        which sentences the tokenizer cannot read (each caller decides whether to refuse or to go on)."""
        full = [e.ids for e in self.tokenizer.encode_batch(list(sentences))]
        return Encoded(
            ids=[keep_within(seq, self.max_length) for seq in full],
            tokens=[len(seq) for seq in full],
            limit=self.max_length,
            unreadable=self.unreadable(full),
        )

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        """Token ids per sentence ([CLS] ... [SEP]), too-long ones cut to max_length."""
        return self.prepare(sentences).ids

    def unreadable(self, ids: Sequence[Sequence[int]]) -> list[int]:
        """Indices of the sentences with nothing between [CLS] and [SEP] but [UNK] (emoji, symbols the vocabulary
        lacks) or nothing at all: a score for them means nothing, so predict and the service refuse them."""
        return [i for i, seq in enumerate(ids) if all(t == self.unk_id for t in seq[1:-1])]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> Batch:
        """Pad a batch to `length`, or to the bucket holding its longest sentence."""
        longest = max(len(s) for s in ids)
        target = length or (bucket_length(longest, self.buckets) if self.buckets else longest)
        return Batch(inputs=pad_ids(ids, self.pad_id, self.input_names, target), lengths=[len(s) for s in ids])

    # -- inference ---------------------------------------------------------------------------
    def run(self, batch: Batch) -> np.ndarray:
        if self.provider != "CUDAExecutionProvider":
            return self.session.run([self.output_name], batch.inputs)[0].astype(np.float32)
        if self.graphs is not None and self.graphs.fits(*batch.inputs["input_ids"].shape):
            try:
                return self.graphs.run(batch.inputs)
            except Exception as exc:  # noqa: BLE001 - capture can fail for graphs with CPU nodes; IO binding still works
                self.graph_error = first_line(exc, 300)
                log.error("CUDA graph run failed (%s); continuing without CUDA graphs", self.graph_error)
                self.graphs = None
        # Shapes without a graph (over the largest graph batch, or past MAX_GRAPHS shapes) take this path too.
        # IO binding: inputs copied to the device once, the output allocated there by ORT.
        binding = self.session.io_binding()
        for name, array in batch.inputs.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32)

    def warm_up(self, lengths: Sequence[int] = (16,)) -> None:
        """One run per padded length (the first run of a shape allocates). A model that loads but cannot run
        ([CLS] [SEP] padded) is a BertpackError naming the file, so a service worker stops with one line."""
        try:
            empty = self.tokenizer.encode("").ids  # [CLS] [SEP]
            for length in lengths:
                self.run(self.pad([empty], length=length))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/RuntimeException types
            raise BertpackError(
                f"{self.model_path} loads but fails on its first run on {self.provider} "
                f"({type(exc).__name__}: {first_line(exc)}); re-run bertpack export"
            ) from None

    def batches(
        self, ids: Sequence[Sequence[int]], batch_size: int = 32, order: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], Batch]]:
        """The runs a list of sentences is cut into: each run's row positions and its padded batch, taking the
        rows in `order` (default: by length, so a run pads little). Predict, parity and the service all cut this way."""
        order = length_order(ids) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield rows, self.pad([ids[i] for i in rows])

    def logits_from_ids(
        self, ids: Sequence[Sequence[int]], batch_size: int = 32, sort_by_length: bool = True
    ) -> np.ndarray:
        """Logits for already-encoded sentences (each within max_length), in input order."""
        out = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for rows, batch in self.batches(ids, batch_size, None if sort_by_length else range(len(ids))):
            out[rows] = self.run(batch)
        return out

    def logits(self, sentences: Sequence[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        """Logits for every sentence (too-long ones cut), in input order. Sorting by length keeps padding small."""
        if not sentences:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.logits_from_ids(self.encode(sentences), batch_size=batch_size, sort_by_length=sort_by_length)

    def classify(self, sentences: Sequence[str], batch_size: int = 32) -> list[dict]:
        """Label and per-label probability for each sentence (too-long ones cut)."""
        return self.classify_ids(self.encode(sentences), batch_size=batch_size)

    def classify_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32) -> list[dict]:
        """The same for already-encoded sentences (each within max_length)."""
        labels, probs = self.postprocess(self.logits_from_ids(ids, batch_size=batch_size))
        return [
            {"label": label, "probabilities": {lab: float(p[j]) for j, lab in enumerate(self.labels)}}
            for label, p in zip(labels, probs)
        ]

    # -- decision ----------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (the manifest's temperature) of raw logits."""
        return probabilities(logits, self.decision)

    def labels_of(self, probs: np.ndarray) -> list[str]:
        """The label of each row of calibrated probabilities (the manifest's threshold, or the most probable)."""
        return [self.labels[i] for i in label_ids(probs, self.decision)]

    def postprocess(self, logits: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(labels, calibrated probabilities) of raw logits: what predict, parity, bench and the service answer."""
        probs = self.probabilities(logits)
        return self.labels_of(probs), probs


def load_tokenizer(artifact_dir: Path):
    """The artifact's tokenizer.json as the engine uses it (no padding, no truncation: the engine does both)."""
    from tokenizers import Tokenizer

    path = Path(artifact_dir) / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
        raise BertpackError(
            f"{path} is not a tokenizer the `tokenizers` library can load ({first_line(exc)}); re-run bertpack export"
        ) from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _open_session(path: Path, options, providers: list):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise BertpackError(
            f"ONNX Runtime cannot load {path}: {first_line(exc, 300)}; "
            "re-run bertpack export (or check the onnxruntime version with bertpack doctor)"
        ) from None
