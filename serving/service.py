"""The BentoML service: `bentoml serve` (from the repo root) serves the exported CoLA classifier.

Request path: POST /classify is validated twice before any shared work happens, first by BentoML
from the typed signature (list, strings, non-blank, character and count limits -> 400 JSON), then
by the tokenizer (token limit, unless the client sends "truncate": true). Only then are the token
ids sent through the service's own proxy (`self.to_async.infer`, an in-process HTTP call) to
`infer`, the batchable endpoint, where BentoML's adaptive batching merges concurrent requests
into one ONNX Runtime run. An exception inside a batch would fail every request in it, so `infer`
accepts only what has been validated and cannot raise on its contents.

No torch, no transformers: ONNX Runtime, tokenizers and numpy (serving/engine.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter

import bentoml
import numpy as np
from pydantic import StrictBool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.engine import (OnnxClassifier, cuda_available, cuda_problem, gpu_present, keep_within, read_manifest, served_buckets,
                            softmax, verify_files)
from serving.schema import (MAX_CHARS, MAX_SENTENCES, ClassifyResponse, EncodedBatch, Prediction, Sentences,
                            no_tokens_error, too_long_error)
from serving.source import ServeConfig, resolve_model

log = logging.getLogger("bertpack.service")

# Adaptive batching, from scripts/loadtest.py runs on the 2-core CPU host (README, section serve):
# the int8 engine is fastest at 8-16 rows per ORT run, and a batch of up to 64 sentences cut into such
# runs keeps the CPU busy while the next batch forms; the latency bound only sheds load
# (503) when the queue is hopeless, so it is set well above the measured p99 at 64 clients.
MAX_BATCH_SIZE = 64
MAX_LATENCY_MS = 10_000


def _log_to_stderr() -> None:
    """BentoML configures only its own loggers; without this the engine's provider line and its
    CUDA-fallback errors would not reach the server log."""
    root = logging.getLogger("bertpack")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


async def _info(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().info())


# GET /info: BentoML APIs are POST-only, so a small Starlette app is mounted beside them.
info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


class JsonOnly:
    """ASGI middleware: the API takes JSON. BentoML would parse form bodies, and a malformed
    multipart body escapes its error handling as a 500; answer 415 before that can happen."""

    FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            ctype = b""
            for key, value in scope.get("headers", ()):
                if key.lower() == b"content-type":
                    ctype = value.split(b";", 1)[0].strip().lower()
            if ctype.startswith(self.FORM_TYPES):
                response = JSONResponse({"error": f"unsupported Content-Type {ctype.decode('latin-1')!r}: send a JSON body "
                                                  "with Content-Type: application/json"}, status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="bertpack",
    # A GPU host is the target (fp16 on CUDA); without one the service runs int8 on the CPU.
    resources={"gpu": 1, "memory": "4Gi"},
    traffic={"timeout": 30, "max_concurrency": 512},
    threads=1,  # one batch runs at a time; ORT parallelises inside it
    # The internal /infer calls skip the access log, request metrics and tracing: each public request
    # already gets them, and on a small CPU the second pass costs throughput (README, serve).
    logging={"access": {"enabled": os.environ.get("BERTPACK_ACCESS_LOG", "1") == "1", "skip_paths": ["/infer"]}},
    tracing={"excluded_urls": ["/infer"]},
)
class Bertpack:
    def __init__(self) -> None:
        _log_to_stderr()
        self.config = ServeConfig.from_env()
        self.source = resolve_model(self.config.model)
        manifest = read_manifest(self.source.path)
        verify_files(self.source.path, manifest)  # every file, before anything is served
        # Fixed padded lengths (buckets) serve CUDA graphs; on the CPU padding each run to its own longest
        # sentence is ~30% faster on CoLA (README, serve), so the CPU engine runs without buckets.
        # No spinning: idle ORT threads would busy-wait on the cores the HTTP side needs.
        on_gpu = self.config.device == "cuda" or (self.config.device == "auto" and cuda_available())
        self.engine = OnnxClassifier(self.source.path, device=self.config.device, threads=self.config.threads, verify=False,
                                     buckets=served_buckets("cuda" if on_gpu else "cpu"), cuda_graph=self.config.cuda_graphs, spin=False)
        self.version = str(manifest["version"])
        self.vocab_size = self.engine.tokenizer.get_vocab_size()
        self.batch_sizes: Counter[int] = Counter()  # sentences per adaptive batch reaching the engine
        self._lock = threading.Lock()
        if gpu_present() and self.engine.provider != "CUDAExecutionProvider":
            log.error("GPU visible but serving on %s: %s", self.engine.provider, cuda_problem() or "see the ONNX Runtime log")
        log.info("serving %s (%s from %s) with %s on %s", self.source.tag, self.engine.variant, self.source.origin,
                 self.engine.model_path.name, self.engine.provider)
        # Warm-up: the first ORT run of each shape allocates; do it before /readyz says ready.
        for length in self.engine.buckets[:2] or (16,):
            self.engine.run(self.engine.pad([[101, 102]], length=length))

    @bentoml.api
    async def classify(self, sentences: Sentences, truncate: StrictBool = False) -> ClassifyResponse:
        """Classify 1-64 sentences as acceptable/unacceptable English (CoLA).

        Each sentence: a non-blank string of at most 1000 characters. A sentence over the model's
        token limit is refused (400) unless `truncate` is true, then it is cut to the limit.
        """
        encodings = self.engine.tokenizer.encode_batch(sentences)
        ids = [e.ids for e in encodings]
        limit = self.engine.max_length
        empty = [i for i, seq in enumerate(ids) if len(seq) <= 2]
        if empty:
            raise no_tokens_error(empty)
        too_long = [(i, sentences[i], len(seq)) for i, seq in enumerate(ids) if len(seq) > limit]
        if too_long and not truncate:
            raise too_long_error(too_long, limit)
        truncated = [len(seq) > limit for seq in ids]
        ids = [keep_within(seq, limit) for seq in ids]
        probabilities = await self._infer(ids)
        labels = self.engine.labels
        return ClassifyResponse(model=self.source.tag, predictions=[
            Prediction(label=labels[int(np.argmax(p))], probabilities=dict(zip(labels, map(float, p))),
                       model_version=self.version, tokens=len(seq), truncated=cut)
            for p, seq, cut in zip(probabilities, ids, truncated)])

    async def _infer(self, ids: list[list[int]]) -> list[list[float]]:
        """`infer` through BentoML's self-proxy (in-process ASGI), so the call joins an adaptive batch.

        BentoML 1.4.40's proxy client closes its aiohttp session every 100 requests, cutting off
        the calls still in flight ("Server disconnected"; bentoml/BentoML#5540, fix pending in
        #5698). For the in-process connector a refresh has no purpose, so it is switched off, and
        a call cut off anyway is retried once (infer is a pure function of its input).
        """
        import aiohttp

        client = self.to_async  # type: ignore[attr-defined]  # set by BentoML at start-up
        manager = getattr(client, "_session_manager", None)
        if manager is not None and getattr(manager, "max_requests", None) != sys.maxsize:
            manager.max_requests, manager.max_age = sys.maxsize, float("inf")
        try:
            return await client.infer(ids)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
            log.warning("self-proxy call to infer cut off (%s); retrying once", exc)
            return await client.infer(ids)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, ids: EncodedBatch) -> list[list[float]]:
        """Internal, batched: label probabilities for token-id sequences ([CLS] ... [SEP]).

        Called by /classify through adaptive batching. Direct callers get the same treatment as
        /classify's sentences: ids outside the vocabulary become [UNK], sequences are cut to the
        model's limit. Nothing here raises on a request's contents, so no request fails its batch.
        """
        limit, unk = self.engine.max_length, self._unk_id()
        clean = [[t if t < self.vocab_size else unk for t in keep_within(seq, limit)]
                 for seq in ids]
        with self._lock:
            self.batch_sizes[len(clean)] += 1
        logits = self.engine.logits_from_ids(clean, batch_size=self._engine_batch())
        return softmax(logits).tolist()

    def _unk_id(self) -> int:
        return self.engine.tokenizer.token_to_id("[UNK]") or 0

    def _engine_batch(self) -> int:
        # On the GPU one run per adaptive batch is best; on the CPU the measured sweet spot.
        return MAX_BATCH_SIZE if self.engine.provider == "CUDAExecutionProvider" else self.config.engine_batch

    def info(self) -> dict:
        manifest = self.engine.manifest
        with self._lock:
            sizes = dict(sorted(self.batch_sizes.items()))
        batches = sum(sizes.values())
        return {
            "model": self.source.tag, "model_version": self.version, "origin": self.source.origin, "path": str(self.source.path),
            "engine": {"variant": self.engine.variant, "file": self.engine.model_path.name, "provider": self.engine.provider,
                       "device_requested": self.config.device, "cuda_graphs": self.engine.graphs is not None, "cuda_graph_error": self.engine.graph_error,
                       "threads": self.engine.session.get_session_options().intra_op_num_threads,
                       "engine_batch": self._engine_batch(), "cuda_problem": cuda_problem()},
            "labels": self.engine.labels, "max_length": self.engine.max_length,
            "limits": {"max_sentences": MAX_SENTENCES, "max_chars": MAX_CHARS, "max_tokens": self.engine.max_length},
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS, "batches": batches,
                         "sentences": sum(k * v for k, v in sizes.items()), "largest": max(sizes, default=0),
                         "sizes": {str(k): v for k, v in sizes.items()}},
            "parity": manifest.get("parity", {}), "source_metrics": manifest.get("source", {}).get("metrics", {}),
            "serving_default": manifest.get("serving_default", {}), "pid": os.getpid(),
        }


Bertpack.add_asgi_middleware(JsonOnly)

