"""User-facing errors: the CLI prints `error: <message>` and exits non-zero, no traceback."""

import contextlib
import logging
from collections.abc import Iterator


class BertpackError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code: int = 2


class ParityError(BertpackError):
    """An exported variant broke its tolerance (the artifact is still written, marked failed)."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM (`timeout`, `docker stop`, systemd, Kubernetes) as an exception, so every cleanup that Ctrl-C runs
    (staging folders, the run folder's state) runs for it too. Not a KeyboardInterrupt: Typer turns those into a
    silent exit 130 before the CLI could say what happened."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process the signal ended


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def quiet_hub_retries() -> Iterator[None]:
    """Offline, huggingface_hub logs each failed request (the raw exception, one long line) before the
    caller can raise its own one-line BertpackError; keep only that error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
