"""Filesystem helpers: atomic writes and hashing. Standard library only (the service imports it)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def umask_mode(base: int) -> int:
    """`base` less the process umask: the mode open()/mkdir() would give. mkstemp/mkdtemp create 0600/0700,
    which would leave every written file private to its owner (another user could not export or serve it)."""
    try:  # Linux reports the umask without changing it (os.umask can only read it by setting it, racing threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return base & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: a reader sees the old file or the
    whole new one, also after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final`; on success it replaces `final`, on failure it is removed.

    Beside, not in /tmp, so the closing rename stays on one filesystem and is atomic.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    moved = False
    try:
        if final.exists():  # a fresh name, so a folder a killed run left there is never in the way
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old)  # a folder may replace an empty one
            moved = True
        os.replace(tmp, final)
    except BaseException:  # put the old folder back rather than leave only hidden folders
        if moved:
            os.replace(old, final)
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def work_dir(final: Path) -> Iterator[Path]:
    """A scratch folder beside `final` for the intermediate files of a command writing it, removed at the end. Named
    after `final` (.NAME.*.work) so that the next writer of `final` finds and removes one that a killed run left
    (remove_leftovers); a scratch folder in /tmp would stay there, hundreds of MB to GBs of ONNX files each.
    Absolute: worker processes that run elsewhere get paths in it."""
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".work", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(final: Path) -> list[str]:
    """Clear what a writer of `final` that was killed outright (SIGKILL, OOM killer, power loss: no cleanup ran) left
    beside it: staging_dir's .NAME.*.partial and work_dir's .NAME.*.work folders are removed; an .NAME.*.old folder
    is the previous `final`, moved aside in staging_dir's swap: it goes back when `final` is missing (the run was
    killed between the two renames), else it is removed. Call it holding `final`'s writer lock (bertpack.locks), so
    none of them belongs to a live writer. Returns one line per thing done, for the caller to show."""
    final = Path(final)
    done: list[str] = []
    if not final.parent.is_dir():
        return done
    # mkdtemp's names exactly (8 characters from [a-z0-9_]): never those of a folder named NAME.something
    ours = re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.(partial|work|old)")
    found = [
        p
        for p in final.parent.glob(f".{glob.escape(final.name)}.*")
        if ours.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    ]
    olds = sorted((p for p in found if p.name.endswith(".old")), key=lambda p: p.stat().st_mtime)
    if olds and not os.path.lexists(final):
        os.replace(olds.pop(), final)
        done.append(f"put back {final}: a run killed while replacing it had left it aside")
    for path in olds + [p for p in found if p.name.endswith((".partial", ".work"))]:
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"removed {path.name}, left beside {final} by a killed run")
    return done


def check_writable_parent(out: Path, option: str) -> None:
    """Make sure `out` can be created: its nearest existing ancestor is a folder that takes new entries. So an
    unwritable destination is a one-line error before any slow work rather than a traceback after it, and a check
    that fails (or a later one) leaves no folders behind: nothing is created here."""
    from bertpack.errors import BertpackError

    out = Path(out).absolute()
    nearest = next((a for a in out.parents if a.exists()), None)
    if nearest is None:
        return
    if not nearest.is_dir():
        raise BertpackError(f"{option} {out}: {nearest} is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".probe", dir=nearest))
    except OSError as exc:
        raise BertpackError(
            f"{option} {out}: cannot write in {nearest} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
