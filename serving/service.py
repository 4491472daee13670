"""The BentoML service: `bentoml serve` (from the repo root) serves an exported classifier.

One HTTP pass per request: POST /classify is the batchable API itself. Its body is validated and tokenized with the
served tokenizer while it is parsed (serving/schema.py, ClassifyInput), so a bad request is a 400 before it joins a
batch, and BentoML's adaptive batching merges the sentences of concurrent requests into one ONNX Runtime run that
cannot fail on their contents. GET /info describes what is served. ONNX Runtime, tokenizers and numpy only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bertpack.errors import BertpackError
from bertpack.manifest import parity_failure, read_manifest
from serving import bentoml_compat
from serving.cuda import cuda_problem
from serving.engine import OnnxClassifier
from serving.http_guard import KNOWN_PATHS, BodyTooLarge, JsonOnly
from serving.schema import (
    MAX_BODY_BYTES,
    MAX_CHARS,
    MAX_SENTENCES,
    ClassifyAnswer,
    ClassifyInput,
    ClassifyRequest,
    Prediction,
    Tokenized,
    error_body,
    token_errors,
)
from serving.source import (
    DEFAULT_MODEL,
    REQUEST_TIMEOUT_S,
    SERVED_MODEL,
    VERIFIED_FILES,
    ServeConfig,
    check_still_served,
    files_fingerprint,
    model_identity,
    preflight,
)

log = logging.getLogger("bertpack.service")

MAX_CONCURRENCY = 512  # requests in flight per server (429 past it); BentoML divides it among the workers
SETTINGS = ServeConfig.at_import()  # what the decorator takes; a bad value is refused by preflight() at start-up
ONE_LINE_ERRORS = bentoml_compat.ClientErrorsOnOneLine(
    BodyTooLarge, MAX_BODY_BYTES, lambda errors: error_body(errors)["error"]
)


async def _info(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().info())


# GET /info: BentoML APIs are POST-only, so a small Starlette app is mounted beside them.
info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="bertpack",
    resources={"gpu": 1, "memory": "4Gi"},  # a GPU host is the target (fp16 on CUDA); without one, int8 on the CPU
    workers=SETTINGS.workers,
    threads=1,  # one batch at a time per worker; ONNX Runtime parallelises inside it
    traffic={"timeout": REQUEST_TIMEOUT_S, "max_concurrency": MAX_CONCURRENCY},
    logging={"access": {"enabled": SETTINGS.access_log}},
    # OpenTelemetry spans for /classify cost about a fifth of the served rate on a small CPU: only when asked for.
    tracing={} if SETTINGS.tracing else {"excluded_urls": ["/classify"]},
)
class Bertpack:
    @bentoml.on_deployment
    def check_before_serving() -> None:
        """Once, in `bentoml serve`'s own process, before any worker starts: a bad setting or artifact stops the
        server here with one line and exit status 1. The workers are handed the exact model that was checked."""
        bentoml_compat.log_to_stderr(ONE_LINE_ERRORS)
        bentoml_compat.check_version()
        if (exporter := bentoml_compat.tracing_exporter()) and not SETTINGS.tracing:
            log.warning(
                "BentoML tracing is configured (exporter %s) but /classify is not traced: set BERTPACK_TRACING=1",
                exporter,
            )
        try:
            _, source, manifest = preflight(default_model=_built_model() or DEFAULT_MODEL)
        except BertpackError as exc:
            log.error("cannot serve: %s", exc)
            raise SystemExit(1) from None
        # The exact tag (not "latest", which a new export moves) or the folder's absolute path.
        os.environ["BERTPACK_MODEL"] = str(source.path) if source.origin == "folder" else source.tag
        if why := parity_failure(manifest):  # not registered in the store by export: served from a folder on purpose
            log.warning(
                "%s failed its parity check at export (%s); serving it anyway: see %s/parity.md",
                source.tag,
                why,
                source.path,
            )
        os.environ[SERVED_MODEL] = model_identity(manifest)
        if fingerprint := files_fingerprint(source.path, manifest):  # workers skip re-hashing unchanged files
            os.environ[VERIFIED_FILES] = fingerprint
        bentoml_compat.prepare_workers()

    def __init__(self) -> None:
        bentoml_compat.log_to_stderr(ONE_LINE_ERRORS)
        bentoml_compat.die_with_the_server()
        with bentoml_compat.stop_server_on_failure():
            self.config, self.source, manifest = preflight(verified=os.environ.get(VERIFIED_FILES))
            # CPU: each run padded to its own longest sentence, no thread spinning (idle ORT threads would take the
            # cores the HTTP side needs); CUDA: a few bucket lengths, so CUDA graphs can be replayed.
            self.engine = OnnxClassifier(
                self.source.path,
                variant=self.config.variant,
                device=self.config.device,
                threads=self.config.threads_per_worker(),
                verify=False,
                buckets="served",
                cuda_graph=self.config.cuda_graphs,
                spin=False,
            )
            # Read last: a folder swapped at any point of this start-up shows here.
            check_still_served(
                self.source,
                [manifest, self.engine.manifest, read_manifest(self.source.path)],
                os.environ.get(SERVED_MODEL),
            )
            self.engine.warm_up(self.engine.buckets[:2] or (16,))  # the first run of a shape allocates
        self.tag, self.version = self.source.tag, str(manifest["version"])
        self.engine_batch = SETTINGS.max_batch_size if self.engine.runs_on == "cuda" else self.config.engine_batch
        self.batch_sizes: Counter[int] = Counter()  # sentences per adaptive batch
        self._lock = threading.Lock()
        self._log_start(manifest)

    def tokenize(self, request: ClassifyRequest) -> list[Tokenized]:
        """A valid request's sentences as the batch takes them (called while its body is parsed: ClassifyInput)."""
        encoded = self.engine.prepare(request.sentences)
        if error := token_errors(encoded.too_long, encoded.unreadable, encoded.limit, request.truncate):
            raise error
        return [Tokenized(ids, cut) for ids, cut in zip(encoded.ids, encoded.truncated)]

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
        input_spec=ClassifyInput,
    )
    def classify(self, sentences: list[Tokenized]) -> ClassifyAnswer:
        """Classify 1-64 sentences (each a non-blank string of at most 1000 characters) with the model's labels.

        A sentence over the model's token limit is refused (400) unless `truncate` is true; then it is cut.
        """
        with self._lock:
            self.batch_sizes[len(sentences)] += 1
        logits = self.engine.logits_from_ids([s.ids for s in sentences], batch_size=self.engine_batch)
        labels, probabilities = self.engine.postprocess(logits)
        names = self.engine.labels
        return [
            Prediction(
                label=label,
                probabilities=dict(zip(names, map(float, p))),
                model_version=self.version,
                tokens=len(s.ids),
                truncated=s.truncated,
            )
            for label, p, s in zip(labels, probabilities, sentences)
        ]

    def info(self) -> dict:
        with self._lock:
            sizes = dict(sorted(self.batch_sizes.items()))
        engine, manifest = self.engine, self.engine.manifest
        return {
            # Not the artifact's folder: a client need not learn the server's paths.
            "model": self.tag,
            "model_version": self.version,
            "origin": self.source.origin,
            "engine": {
                "variant": engine.variant,
                "file": engine.model_path.name,
                "provider": engine.provider,
                "device_requested": self.config.device,
                "cuda_graphs": engine.graphs is not None,
                "cuda_graph_error": engine.graph_error,
                "threads": engine.session.get_session_options().intra_op_num_threads,
                "engine_batch": self.engine_batch,
                "cuda_problem": cuda_problem(),
            },
            "workers": SETTINGS.workers,
            "labels": engine.labels,
            "max_length": engine.max_length,
            "decision": {**engine.decision.record(), "positive_label": engine.labels[engine.decision.positive]},
            "limits": {"max_sentences": MAX_SENTENCES, "max_chars": MAX_CHARS, "max_tokens": engine.max_length},
            "batching": {
                "max_batch_size": SETTINGS.max_batch_size,
                "max_latency_ms": SETTINGS.max_latency_ms,
                "batches": sum(sizes.values()),
                "sentences": sum(k * v for k, v in sizes.items()),
                "largest": max(sizes, default=0),
                "sizes": {str(k): v for k, v in sizes.items()},
            },
            "parity": manifest.get("parity", {}),
            "source_metrics": manifest.get("source", {}).get("metrics", {}),
            "serving_default": manifest.get("serving_default", {}),
            "pid": os.getpid(),
        }

    def _log_start(self, manifest: dict) -> None:
        engine = self.engine
        if self.config.variant and (made_for := engine.made_for_another_device()):
            log.warning(
                "BERTPACK_VARIANT=%s was made for %s but runs on %s here: expect it to be slower than the default (%s)",
                engine.variant,
                made_for,
                engine.runs_on,
                manifest["serving_default"][engine.runs_on],
            )
        if why := engine.int8_kernel_warning():
            log.warning("%s", why)
        log.info(
            "serving %s (%s from %s) with %s on %s",
            self.tag,
            engine.variant,
            self.source.origin,
            engine.model_path.name,
            engine.provider,
        )


def _built_model() -> str | None:
    """Served from a built Bento: the model version it was built with, so an unset BERTPACK_MODEL does not pick up a
    later export from the store's "latest"."""
    bento = getattr(Bertpack, "bento", None)
    return next((str(m.tag) for m in (bento.info.models if bento is not None else [])), None)  # the model it carries


bentoml_compat.bound_metric_labels(KNOWN_PATHS)
bentoml_compat.json_errors_outside_traffic_limits(JsonOnly)
Bertpack.add_asgi_middleware(
    JsonOnly, max_concurrency=MAX_CONCURRENCY, timeout_s=REQUEST_TIMEOUT_S, max_latency_ms=SETTINGS.max_latency_ms
)
