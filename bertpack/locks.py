"""One writer per output folder: an advisory lock (fcntl.flock) on a file beside the folder, held while a command
writes it. Two commands aimed at the same --out at once (two terminals, a CI job beside a manual run, a --resume
while the run still trains) then give one result and a one-line refusal, not a folder mixing both. Standard library
only. The kernel drops a flock when its holder dies, even by SIGKILL, so a lock is never left stuck."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from bertpack.errors import BertpackError
from bertpack.files import umask_mode


def lock_path(target: Path) -> Path:
    """Beside the target, not in it: an --overwrite moves the target folder aside and a staging rename replaces it."""
    target = Path(os.path.abspath(target))
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def writing(target: Path, command: str, option: str = "--out") -> Iterator[None]:
    """Hold TARGET's lock for the body, or raise a BertpackError naming the process that holds it. Where no lock file
    can be made (a parent that is a file, a folder without write permission), the body runs unlocked: the command's
    own checks name that problem. Parent folders made for the lock are removed again if they are left empty."""
    path = lock_path(target)
    made = [p for p in path.parents if not p.exists()]  # deepest first
    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, target, command, option)
    except OSError:
        pass
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # unlinked while still held, so no one can take the stale file
                path.unlink()
            os.close(fd)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, target: Path, command: str, option: str) -> int:
    for _ in range(10):  # a holder that finishes unlinks the file: lock the file that is at the path now
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, umask_mode(0o666))
        try:
            _flock_soon(fd)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise BertpackError(
                f"{option} {target} is being written by {who}; wait for it to finish (or stop it), "
                f"or choose another {option}"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            return fd
        os.close(fd)
    raise OSError(f"could not lock {path}")


def _holder(fd: int) -> str:
    """What the lock file says about its holder: "bertpack train (pid N)"."""
    pid, _, what = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].strip().partition(" ")
    return f"{what or 'bertpack'} (pid {pid})" if pid.isdigit() else "another bertpack command"


def _flock_soon(fd: int) -> None:
    """The lock, or BlockingIOError when another process keeps it: a writer holds it for minutes, held_by() for
    microseconds, so a few short tries tell one from the other."""
    for wait in (0.02, 0.05, 0.1, 0.2, None):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if wait is None:
                raise
            time.sleep(wait)


def held_by(target: Path) -> str | None:
    """Who holds TARGET's lock now ("bertpack train (pid N)"), or None when no live process does: then a run folder
    that says "training" was left by a process that was killed, and nothing will finish it. Creates nothing."""
    try:
        fd = os.open(lock_path(target), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
