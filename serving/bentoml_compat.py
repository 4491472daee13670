"""What the service needs from BentoML beyond its public API, in one place, for the version it was written for.

- `bound_metric_labels`: BentoML labels each request's metrics with its raw URL path, so made-up URLs add series
  without bound (until /metrics breaks); the label is bounded to the service's own paths.
- `json_errors_outside_traffic_limits`: BentoML puts a service's middlewares inside its request-timeout and
  max-concurrency middlewares, so their 504 and 429 answers would bypass the JSON error layer; it goes in front.
- `ClientErrorsOnOneLine`: BentoML logs a client's bad input (400) and a shed request (503) as an ERROR with a
  traceback; they become one WARNING line.
- Worker supervision: a worker that cannot start stops the whole server with one line and exit status 1 (circus would
  restart it forever), and a worker dies with its `bentoml serve` (each worker is in a process group of its own).

Each piece touches BentoML internals that may move: `check_version` says so in one line when the installed BentoML is
not the one this module was written for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from http import HTTPStatus
from typing import Callable, Iterator

from bertpack.errors import BertpackError, first_line

log = logging.getLogger("bertpack.service")

WRITTEN_FOR = "1.4.40"
# BentoML's logger for exceptions raised while answering a request (`log_exception` in its http app).
HTTP_APP_LOGGER = "bentoml._internal.server.http_app"
# Set by `bentoml serve`'s own process (check_before_serving); its workers inherit them (circus copies the environment).
FAILED_MARK = "BERTPACK_SERVE_FAILED_MARK"
SERVER_PID = "BERTPACK_SERVE_PID"


def check_version() -> None:
    """One WARNING line when the installed BentoML is not the release this module was checked against."""
    import bentoml

    if bentoml.__version__ != WRITTEN_FOR:
        log.warning(
            "BentoML %s is installed; bertpack's service was written for %s (serving/bentoml_compat.py): "
            "error bodies, metrics labels or worker supervision may differ; pip install bentoml==%s",
            bentoml.__version__,
            WRITTEN_FOR,
            WRITTEN_FOR,
        )


def tracing_exporter() -> str | None:
    """The OpenTelemetry exporter BentoML's configuration names (None when tracing is not configured)."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.config.tracing.exporter_type.get() or None
    except Exception:  # noqa: BLE001 - only a hint for a warning: a moved config must not stop the server
        return None


# -- metrics -----------------------------------------------------------------------------------------------


class _KnownEndpoints:
    """A Prometheus metric whose `endpoint` label takes the service's own paths only; any other path is "other"."""

    def __init__(self, metric, known: frozenset[str]) -> None:
        self._metric, self._known = metric, known

    def labels(self, *args, **labels):
        if "endpoint" in labels and labels["endpoint"] not in self._known:
            labels["endpoint"] = "other"
        return self._metric.labels(*args, **labels)

    def __getattr__(self, name: str):
        return getattr(self._metric, name)


def bound_metric_labels(known_paths: frozenset[str]) -> None:
    """Bound the `endpoint` label of BentoML's request metrics to `known_paths` (its metrics middleware runs before
    any of the service's, so the labels are bounded where they are made)."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as metrics

    if getattr(metrics, "_bertpack_bounded", False):
        return
    setup = metrics._setup

    def bounded_setup(self, *args, **kwargs) -> None:
        setup(self, *args, **kwargs)
        for name in (
            "metrics_request_duration",
            "metrics_request_total",
            "metrics_request_in_progress",
            "metrics_websocket_connections",
            "metrics_websocket_data_received",
            "metrics_websocket_data_sent",
        ):
            setattr(self, name, _KnownEndpoints(getattr(self, name), known_paths))

    metrics._setup, metrics._bertpack_bounded = bounded_setup, True


# -- middleware order --------------------------------------------------------------------------------------


def json_errors_outside_traffic_limits(json_layer: type) -> None:
    """Move the service's `json_layer` middleware in front of BentoML's timeout and max-concurrency middlewares
    (still behind metrics and the access log, which then count the statuses it writes), and hand it the limits in
    force (BENTOML_CONFIG_OPTIONS can change the decorator's) so that its answers name the real ones."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
    from starlette.middleware import Middleware

    if getattr(ServiceAppFactory, "_bertpack_ordered", False):
        return
    built = ServiceAppFactory.middlewares.fget

    def middlewares(self) -> list:
        stack = built(self)
        rest = [m for m in stack if m.cls is not json_layer]
        limits = {}
        for m in rest:
            if m.cls is MaxConcurrencyMiddleware:
                limits["max_concurrency"] = m.kwargs["max_concurrency"]
            elif m.cls is TimeoutMiddleware:
                limits["timeout_s"] = m.kwargs["timeout"]
        ours = [Middleware(json_layer, *m.args, **{**m.kwargs, **limits}) for m in stack if m.cls is json_layer]
        at = next((i for i, m in enumerate(rest) if m.cls in (TimeoutMiddleware, MaxConcurrencyMiddleware)), len(rest))
        return rest[:at] + ours + rest[at:]

    ServiceAppFactory.middlewares, ServiceAppFactory._bertpack_ordered = property(middlewares), True


# -- logging -----------------------------------------------------------------------------------------------


class ClientErrorsOnOneLine(logging.Filter):
    """A client's bad input (pydantic ValidationError, 400), a body over the limit (413), a client that hung up and
    a shed request (503) are the client's or the load's doing: one WARNING line each, no traceback. Anything else
    keeps its traceback."""

    def __init__(
        self, body_too_large: type[Exception], max_body_bytes: int, describe: Callable[[list[dict]], str]
    ) -> None:
        """`describe`: the one line a client gets for a ValidationError's errors (the same text goes to the log)."""
        super().__init__()
        self.body_too_large, self.max_body_bytes, self.describe = body_too_large, max_body_bytes, describe

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError
        from starlette.requests import ClientDisconnect

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.body_too_large):
            summary = f"client error, 413 (body over {self.max_body_bytes} bytes)"
        elif isinstance(exc, ClientDisconnect):
            summary = "client disconnected before its whole body arrived"
        elif isinstance(exc, ValidationError):
            summary = f"client error, 400 ({self.describe(exc.errors(include_url=False))[:300]})"
        elif isinstance(exc, BentoMLException) and exc.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
            summary = (
                f"503 overloaded ({first_line(exc)}): the batching queue could not answer within the latency bound"
            )
        elif isinstance(exc, BentoMLException) and int(exc.error_code) < 500:
            summary = f"client error, {int(exc.error_code)} ({first_line(exc)[:200]})"
        else:
            return True
        args = record.args
        where = " ".join(reversed(args)) if isinstance(args, tuple) and len(args) == 2 else record.getMessage()
        record.msg, record.args = f"{where}: {summary}", ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def log_to_stderr(one_line_filter: logging.Filter) -> None:
    """Let bertpack's records reach the server log once (under `bentoml serve` the root logger has BentoML's handler;
    a handler of bertpack's own is added only where nothing upstream prints), and install `one_line_filter` on
    BentoML's request-exception logger."""
    ours = logging.getLogger("bertpack")
    ours.setLevel(logging.INFO)
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
        ours.addHandler(handler)
    http_log = logging.getLogger(HTTP_APP_LOGGER)
    if not any(type(f) is type(one_line_filter) for f in http_log.filters):
        http_log.addFilter(one_line_filter)


# -- worker supervision ------------------------------------------------------------------------------------


def in_worker() -> bool:
    """True inside a worker started by `bentoml serve` (False in a script or a test that builds the class itself)."""
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def prepare_workers() -> None:
    """In `bentoml serve`'s own process, before workers start: where a failed worker leaves its mark, so that this
    process exits 1 rather than 0 once it stopped the server, and the pid a worker must die with."""
    mark = os.path.join(tempfile.gettempdir(), f"bertpack-serve-{os.getpid()}.failed")
    os.environ[FAILED_MARK] = mark
    os.environ[SERVER_PID] = str(os.getpid())

    import atexit

    atexit.register(_exit_failed_if_marked, mark)


def _exit_failed_if_marked(mark: str) -> None:
    if os.path.exists(mark):
        with contextlib.suppress(OSError):
            os.remove(mark)
        logging.shutdown()
        os._exit(1)


def die_with_the_server() -> None:
    """In a worker: SIGTERM (a graceful stop) when `bentoml serve` dies, also when it is killed outright, which would
    leave the worker answering on the port. Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing changes."""
    parent = os.environ.get(SERVER_PID)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def stop_server_on_failure() -> Iterator[None]:
    """Around a worker's start-up: a BertpackError stops the whole server (one `cannot serve:` line, exit status 1)
    instead of a worker restarted forever, each time with a traceback. Outside a worker it is raised as it is."""
    try:
        yield
    except BertpackError as exc:
        if not in_worker():
            raise
        log.error("cannot serve: %s", exc)
        if mark := os.environ.get(FAILED_MARK):
            with contextlib.suppress(OSError), open(mark, "w") as fh:
                fh.write(str(exc))
        os.kill(os.getppid(), signal.SIGTERM)  # the arbiter: `bentoml serve` stops its workers and returns
        os._exit(1)
