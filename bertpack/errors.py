"""User-facing errors: the CLI prints `error: <message>` and exits non-zero, no traceback."""

import contextlib
import errno
import logging
import os
import re
import resource
from collections.abc import Iterator
from pathlib import Path


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


class storage_errors(contextlib.AbstractContextManager):
    """Turn a file that could not be read or written in the body (storage_problem) into one error line:
    "WHAT stopped: PROBLEM; KEPT: FIX". Anything else passes through unchanged."""

    def __init__(self, where: Path, what: str, kept: str) -> None:
        self.where, self.what, self.kept = Path(where), what, kept

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None or isinstance(exc, BertpackError) or (found := storage_problem(exc, self.where)) is None:
            return None
        problem, fix = found
        raise BertpackError(f"{self.what} stopped: {problem}; {self.kept}: {fix}, then run it again") from None


def storage_problem(exc: BaseException, where: Path) -> tuple[str, str] | None:
    """(what went wrong, the fix) when `exc` is a file that could not be read or written under `where` (a full disk,
    a file size limit, permissions), else None. Libraries report these in their own ways: Python's OSError, Rust's
    "(os error 28)" (tokenizers, safetensors), or torch's "iostream error" and ONNX's "Wire format was corrupt" (a
    file cut short by a full disk, read back) with no error number at all: for those the free space left under
    `where` (read before the partial files are removed) or a file size limit tells."""
    number, file = None, None
    if isinstance(exc, OSError) and exc.errno is not None:
        number = exc.errno
        file = (
            exc.filename if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT) else None
        )  # not a hidden temp name
    else:  # shutil.Error (copytree) lists "[Errno 28] ..." per file; Rust's io::Error ends in "(os error 28)"
        numbers = [int("".join(n)) for n in re.findall(r"\[Errno (\d+)\]|\(os error (\d+)\)", str(exc))]
        number = next((n for n in numbers if n in STORAGE_ERRNOS), None)
    if number is not None:
        if number not in STORAGE_ERRNOS:  # e.g. a ConnectionError, also an OSError
            return None
        return f"{os.strerror(number)}{f': {file}' if file else ''}", _fix(number, where, file)
    if not isinstance(exc, Exception):
        return None
    try:
        stat = os.statvfs(next(p for p in (Path(where), *Path(where).absolute().parents) if p.exists()))
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    if free < LOW_SPACE and free < stat.f_blocks * stat.f_frsize / 20:  # and under 5%: a small disk is not a full one
        return (
            f"{type(exc).__name__}: {first_line(exc, 160)}, with {free / 2**20:.1f} MiB left on the disk of {where}",
            _fix(errno.ENOSPC, where),
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return (
            f"{type(exc).__name__}: {first_line(exc, 160)}, under a file size limit of {limit} bytes (ulimit -f)",
            _fix(errno.EFBIG, where),
        )
    return None


STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
}
LOW_SPACE = 64 * 2**20  # a write cut short leaves less free than one more model file would take


def _fix(number: int, where: Path, file: str | None = None) -> str:
    if number in (errno.ENOSPC, errno.EDQUOT):
        return f"free disk space in {where} (or choose a folder on another disk)"
    if number == errno.EFBIG:
        return "raise the file size limit (ulimit -f), or choose a folder on a file system that takes larger files"
    if number == errno.EROFS:
        return f"{where} is on a read-only file system: choose a folder you can write to"
    if number in (errno.EACCES, errno.EPERM):
        return f"fix the permissions of {file or where} (or choose a folder you can write to)"
    return f"check the disk of {where}{f' and {file}' if file else ''}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


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
