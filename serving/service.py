"""The BentoML service: `bentoml serve` (from the repo root) serves the exported CoLA classifier.

Request path: POST /classify is validated twice before any shared work happens, first by BentoML
from the typed signature (list, strings, non-blank, character and count limits -> 400 JSON), then
by the tokenizer (token limit, unless the client sends "truncate": true). Only then are the token
ids sent through the service's own proxy (`self.to_async.infer`, an in-process HTTP call) to
`infer`, the batchable endpoint, where BentoML's adaptive batching merges concurrent requests
into one ONNX Runtime run. An exception inside a batch would fail every request in it, so `infer`
accepts only what has been validated and cannot raise on its contents.

Errors: every client mistake is a 4xx JSON body whose "error" names each problem and its fix (the
JsonOnly middleware, serving/http_guard.py, refuses bodies over MAX_BODY_BYTES (413) and rewrites BentoML's 400/404/405/415/429/503/504 bodies)
and costs one WARNING line in the log.
A bad setting or artifact stops `bentoml serve` before any worker starts (check_before_serving), with
one "cannot serve: ..." line and exit status 1.

No torch, no transformers: ONNX Runtime, tokenizers and numpy (serving/engine.py).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from http import HTTPStatus

import bentoml
import numpy as np
from pydantic import ConfigDict, StrictBool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bertpack.errors import BertpackError
from serving.http_guard import (INTERNAL_CALL, ClientErrorsOnOneLine, JsonOnly, bound_metric_labels, client_error,
                                guard_outside_traffic_limits)
from serving.engine import OnnxClassifier, cuda_problem, keep_within, parity_failure, read_manifest
from serving.schema import (MAX_CHARS, MAX_SENTENCES, OVERLOADED, TOO_MANY, ClassifyResponse, EncodedBatch, Prediction, Sentences,
                            error_body, no_tokens_detail, too_long_detail)
from serving.source import (DEFAULT_MODEL, REQUEST_TIMEOUT_S, SERVED_MODEL, VERIFIED_FILES, ServeConfig, check_still_served,
                            files_fingerprint, model_identity, preflight)

log = logging.getLogger("bertpack.service")

# Adaptive batching, from scripts/loadtest.py runs on the 2-core CPU host (README, section serve):
# the int8 engine is fastest at 8-16 rows per ORT run, and a batch of up to 64 sentences cut into such
# runs keeps the CPU busy while the next batch forms; the latency bound only sheds load
# (503) when the queue is hopeless, so its default is set well above the measured p99 at 64 clients.
MAX_BATCH_SIZE = 64
TIMEOUT_S = REQUEST_TIMEOUT_S  # BentoML's request timeout (504 past it)
MAX_CONCURRENCY = 512  # requests in flight per worker (429 past it)


def _import_time_setting(name: str, field: str):
    """A BERTPACK_* setting that BentoML takes in the decorator, so it is read at import; a bad value falls back
    to the default here and is refused with its one line by preflight() at start-up."""
    try:
        return getattr(ServeConfig.from_env({name: os.environ.get(name, "")}), field)
    except BertpackError:
        return getattr(ServeConfig, field)


MAX_LATENCY_MS: int = _import_time_setting("BERTPACK_MAX_LATENCY_MS", "max_latency_ms")


def _log_to_stderr() -> None:
    """Let the engine's provider line and its CUDA-fallback errors reach the server log, once: under
    `bentoml serve` the root logger has BentoML's handler and bertpack's records propagate to it; a
    handler of bertpack's own is added only where nothing upstream prints (a plain script)."""
    ours = logging.getLogger("bertpack")
    ours.setLevel(logging.INFO)
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
        ours.addHandler(handler)
    http_log = logging.getLogger("bentoml._internal.server.http_app")  # BentoML's log_exception()
    if not any(isinstance(f, ClientErrorsOnOneLine) for f in http_log.filters):
        http_log.addFilter(ClientErrorsOnOneLine())


# Set by check_before_serving in `bentoml serve`'s own process; its workers inherit it (circus copies the environment).
FAILED_MARK = "BERTPACK_SERVE_FAILED_MARK"


def _cannot_serve(exc: BertpackError) -> None:
    """A start-up failure inside a BentoML worker (the checks before serving passed, the worker still
    failed, e.g. ONNX Runtime refusing the model): one line in the log, then stop the whole server
    with a non-zero exit (circus would restart the worker forever, each time with a traceback)."""
    from bentoml._internal.context import server_context

    if server_context.worker_index is None:
        return  # not a worker (Bertpack.inner() in a script or test): the caller raises
    log.error("cannot serve: %s", exc)
    if os.environ.get(FAILED_MARK):
        with contextlib.suppress(OSError):
            with open(os.environ[FAILED_MARK], "w") as fh:
                fh.write(str(exc))
    os.kill(os.getppid(), signal.SIGTERM)  # the arbiter: `bentoml serve` stops its workers and returns
    os._exit(1)


# Set by check_before_serving to `bentoml serve`'s own pid; its workers inherit it.
SERVER_PID = "BERTPACK_SERVE_PID"


def _die_with_the_server() -> None:
    """In a worker: SIGTERM (a graceful stop) when `bentoml serve` dies. Circus starts each worker in a process group of
    its own, so a `bentoml serve` killed outright (kill -9, a supervisor's last resort) left its workers running,
    still answering on the port with the old model, and the next `bentoml serve` on that port failed with "Address
    already in use" (measured). Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing changes."""
    parent = os.environ.get(SERVER_PID)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_failed_if_marked(mark: str) -> None:
    """atexit in `bentoml serve`'s process: a worker that could not start left the mark; exit 1, not 0."""
    if os.path.exists(mark):
        with contextlib.suppress(OSError):
            os.remove(mark)
        logging.shutdown()
        os._exit(1)


def _built_model() -> str | None:
    """Served from a built Bento: the exact model version it was built with (its bento.yaml), so an unset
    BERTPACK_MODEL does not pick up a later export from the store's "latest"."""
    bento = getattr(Bertpack, "bento", None)
    name = DEFAULT_MODEL.split(":")[0]
    return next((str(m.tag) for m in (bento.info.models if bento is not None else []) if m.tag.name == name), None)


async def _info(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().info())


# GET /info: BentoML APIs are POST-only, so a small Starlette app is mounted beside them.
info_app = Starlette(routes=[Route("/info", _info, methods=["GET"])])


class ClassifyInput(bentoml.IODescriptor):
    """POST /classify's body. A misspelled field is refused rather than ignored (extra="forbid")."""

    model_config = ConfigDict(extra="forbid", title="ClassifyRequest")
    sentences: Sentences
    truncate: StrictBool = False


class InferInput(bentoml.IODescriptor):
    """POST /infer's body (internal, batched): token ids per sentence."""

    model_config = ConfigDict(extra="forbid", title="InferRequest")
    ids: EncodedBatch


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="bertpack",
    # A GPU host is the target (fp16 on CUDA); without one the service runs int8 on the CPU.
    resources={"gpu": 1, "memory": "4Gi"},
    traffic={"timeout": TIMEOUT_S, "max_concurrency": MAX_CONCURRENCY},
    threads=1,  # one batch runs at a time; ORT parallelises inside it
    # The internal /infer calls skip the access log, request metrics and tracing: each public request
    # already gets them, and on a small CPU the second pass costs throughput (README, serve).
    logging={"access": {"enabled": _import_time_setting("BERTPACK_ACCESS_LOG", "access_log"), "skip_paths": ["/infer"]}},
    tracing={"excluded_urls": ["/infer"]},
)
class Bertpack:
    @bentoml.on_deployment
    def check_before_serving() -> None:
        """`bentoml serve` runs this once, in its own process, before it starts any worker: a bad
        setting or artifact stops the server here with one line and exit status 1, instead of workers
        that fail and are restarted forever with a traceback each. (`bentoml build` and a plain import
        do not run it, so both work where no model is present.)"""
        _log_to_stderr()
        try:
            _, source, manifest = preflight(default_model=_built_model() or DEFAULT_MODEL)
        except BertpackError as exc:
            log.error("cannot serve: %s", exc)
            raise SystemExit(1) from None
        # The workers serve exactly what was checked here: the exact tag (not "latest", which a new export moves) or
        # the folder's absolute path (a relative one would be looked up again from the worker's working directory).
        os.environ["BERTPACK_MODEL"] = str(source.path) if source.origin == "folder" else source.tag
        if why := parity_failure(manifest):  # not registered in the store by export, so served from a folder on purpose
            log.warning("%s failed its parity check at export (%s); serving it anyway: see %s/parity.md", source.tag, why, source.path)
        os.environ[SERVED_MODEL] = model_identity(manifest)
        fingerprint = files_fingerprint(source.path, manifest)
        if fingerprint:  # the workers skip the second hashing pass while no file changes
            os.environ[VERIFIED_FILES] = fingerprint
        mark = os.path.join(tempfile.gettempdir(), f"bertpack-serve-{os.getpid()}.failed")
        os.environ[FAILED_MARK] = mark
        atexit.register(_exit_failed_if_marked, mark)
        os.environ[SERVER_PID] = str(os.getpid())

    def __init__(self) -> None:
        _log_to_stderr()
        _die_with_the_server()
        try:
            self._start()
        except BertpackError as exc:
            _cannot_serve(exc)
            raise

    def _start(self) -> None:
        self.config, self.source, manifest = preflight(verified=os.environ.get(VERIFIED_FILES))
        # Fixed padded lengths (buckets) serve CUDA graphs; on the CPU padding each run to its own longest
        # sentence is ~30% faster on CoLA (README, serve), so the CPU engine runs without buckets.
        # No spinning: idle ORT threads would busy-wait on the cores the HTTP side needs.
        # buckets="served": the padding follows the provider the session really got (CPU when CUDA fails to load).
        self.engine = OnnxClassifier(self.source.path, variant=self.config.variant, device=self.config.device,
                                     threads=self.config.threads, verify=False, buckets="served",
                                     cuda_graph=self.config.cuda_graphs, spin=False)
        # Read last, after the model is loaded: a folder swapped at any point of this start-up shows here.
        check_still_served(self.source, [manifest, self.engine.manifest, read_manifest(self.source.path)],
                           os.environ.get(SERVED_MODEL))
        self.version = str(manifest["version"])
        self.vocab_size = self.engine.tokenizer.get_vocab_size()
        self.batch_sizes: Counter[int] = Counter()  # sentences per adaptive batch reaching the engine
        self._lock = threading.Lock()
        # (A visible GPU that ONNX Runtime cannot use is logged by the engine, which knows whether CUDA was expected.)
        if self.config.variant and (made_for := self.engine.made_for_another_device()):
            on = self.engine.runs_on
            log.warning("BERTPACK_VARIANT=%s was made for %s but runs on %s here: expect it to be slower than the default (%s)",
                        self.engine.variant, made_for, on, manifest["serving_default"][on])
        if why := self.engine.int8_kernel_warning():
            log.warning("%s", why)
        log.info("serving %s (%s from %s) with %s on %s", self.source.tag, self.engine.variant, self.source.origin,
                 self.engine.model_path.name, self.engine.provider)
        # Warm-up: the first ORT run of each shape allocates; do it before /readyz says ready.
        self.engine.warm_up(self.engine.buckets[:2] or (16,))

    @bentoml.api(input_spec=ClassifyInput)
    async def classify(self, sentences: Sentences, truncate: StrictBool = False) -> ClassifyResponse:
        """Classify 1-64 sentences as acceptable/unacceptable English (CoLA).

        Each sentence: a non-blank string of at most 1000 characters. A sentence over the model's
        token limit is refused (400) unless `truncate` is true, then it is cut to the limit.
        """
        encoded = self.engine.prepare(sentences)
        if encoded.unreadable:
            return client_error(error_body(no_tokens_detail(encoded.unreadable)))  # type: ignore[return-value]
        if encoded.too_long and not truncate:
            return client_error(error_body(too_long_detail(encoded.too_long, encoded.limit)))  # type: ignore[return-value]
        ids = encoded.ids
        from bentoml.exceptions import BentoMLException

        try:
            probabilities = await self._infer(ids)
        except BentoMLException as exc:
            if exc.error_code == HTTPStatus.TOO_MANY_REQUESTS:  # infer's own slot (the self-proxy call) was refused
                log.warning("429 overloaded: a /classify request found every one of the %d slots busy", MAX_CONCURRENCY)
                return JSONResponse({"error": TOO_MANY.format(limit=MAX_CONCURRENCY)}, status_code=429,  # type: ignore[return-value]
                                    headers={"Retry-After": "1"})
            if exc.error_code != HTTPStatus.SERVICE_UNAVAILABLE:
                raise
            log.warning("503 overloaded: a /classify request could not be answered within %d ms (batching queue)", MAX_LATENCY_MS)
            return JSONResponse({"error": OVERLOADED.format(seconds=MAX_LATENCY_MS / 1000)}, status_code=503)  # type: ignore[return-value]
        labels = self.engine.labels
        return ClassifyResponse(model=self.source.tag, predictions=[
            Prediction(label=label, probabilities=dict(zip(labels, map(float, p))),
                       model_version=self.version, tokens=len(seq), truncated=cut)
            for label, p, seq, cut in zip(self.engine.labels_of(np.asarray(probabilities)), probabilities, ids, encoded.truncated)])

    async def _infer(self, ids: list[list[int]]) -> list[list[float]]:
        """`infer` through BentoML's self-proxy (in-process ASGI), so the call joins an adaptive batch.

        BentoML 1.4.40's proxy client closes its aiohttp session every 100 requests, cutting off
        the calls still in flight ("Server disconnected"; bentoml/BentoML#5540, fix pending in
        #5698). For the in-process connector a refresh has no purpose, so it is switched off, and
        a call cut off anyway is retried once (infer is a pure function of its input).
        INTERNAL_CALL: the call rides on this request's max_concurrency slot instead of taking a second one.
        """
        import aiohttp

        client = self.to_async  # type: ignore[attr-defined]  # set by BentoML at start-up
        manager = getattr(client, "_session_manager", None)
        if manager is not None and getattr(manager, "max_requests", None) != sys.maxsize:
            manager.max_requests, manager.max_age = sys.maxsize, float("inf")
        internal = INTERNAL_CALL.set(True)
        try:
            return await client.infer(ids)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
            log.warning("self-proxy call to infer cut off (%s); retrying once", exc)
            return await client.infer(ids)
        finally:
            INTERNAL_CALL.reset(internal)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS, input_spec=InferInput)
    def infer(self, ids: EncodedBatch) -> list[list[float]]:
        """Internal, batched: calibrated label probabilities (the manifest's temperature) for token-id sequences.

        Called by /classify through adaptive batching. Direct callers get the same treatment as
        /classify's sentences: ids outside the vocabulary become [UNK], sequences are cut to the
        model's limit. Nothing here raises on a request's contents, so no request fails its batch.
        """
        limit = self.engine.max_length
        unk = self.engine.unk_id if self.engine.unk_id is not None else self.engine.pad_id
        clean = [[t if t < self.vocab_size else unk for t in keep_within(seq, limit)]
                 for seq in ids]
        with self._lock:
            self.batch_sizes[len(clean)] += 1
        logits = self.engine.logits_from_ids(clean, batch_size=self._engine_batch())
        return self.engine.probabilities(logits).tolist()

    def _engine_batch(self) -> int:
        # On the GPU one run per adaptive batch is best; on the CPU the measured sweet spot.
        return MAX_BATCH_SIZE if self.engine.provider == "CUDAExecutionProvider" else self.config.engine_batch

    def info(self) -> dict:
        manifest = self.engine.manifest
        with self._lock:
            sizes = dict(sorted(self.batch_sizes.items()))
        batches = sum(sizes.values())
        return {
            # Not the artifact's folder: a client need not learn the server's paths (user names, layout); the operator set it.
            "model": self.source.tag, "model_version": self.version, "origin": self.source.origin,
            "engine": {"variant": self.engine.variant, "file": self.engine.model_path.name, "provider": self.engine.provider,
                       "device_requested": self.config.device, "cuda_graphs": self.engine.graphs is not None, "cuda_graph_error": self.engine.graph_error,
                       "threads": self.engine.session.get_session_options().intra_op_num_threads,
                       "engine_batch": self._engine_batch(), "cuda_problem": cuda_problem()},
            "labels": self.engine.labels, "max_length": self.engine.max_length,
            "decision": {**self.engine.decision.record(), "positive_label": self.engine.labels[self.engine.decision.positive]},
            "limits": {"max_sentences": MAX_SENTENCES, "max_chars": MAX_CHARS, "max_tokens": self.engine.max_length},
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS, "batches": batches,
                         "sentences": sum(k * v for k, v in sizes.items()), "largest": max(sizes, default=0),
                         "sizes": {str(k): v for k, v in sizes.items()}},
            "parity": manifest.get("parity", {}), "source_metrics": manifest.get("source", {}).get("metrics", {}),
            "serving_default": manifest.get("serving_default", {}), "pid": os.getpid(),
        }


bound_metric_labels()
guard_outside_traffic_limits()
Bertpack.add_asgi_middleware(JsonOnly, max_concurrency=MAX_CONCURRENCY, timeout_s=TIMEOUT_S, max_latency_ms=MAX_LATENCY_MS)

