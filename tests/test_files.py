"""bertpack/files.py: the atomic writes every command relies on (real files; a failing rename is injected)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bertpack.files import staging_dir, write_bytes_atomic


def test_staging_dir_replaces_the_folder_whole(tmp_path: Path) -> None:
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staging_dir(final) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]


@pytest.mark.parametrize(
    "failing, error",
    [
        ("second", KeyboardInterrupt()),  # Ctrl-C between the two renames: the old folder goes back
        (
            "first",
            OSError(16, "Device or resource busy"),
        ),  # the old folder cannot move aside: it stays, staging is removed
    ],
    ids=["new-in-fails", "old-aside-fails"],
)
def test_staging_dir_keeps_the_old_folder_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, error: BaseException
) -> None:
    """The swap is two renames (old folder aside as .NAME.*.old, staging .NAME.*.partial in); whichever fails, the old
    folder is left as it was and no hidden folder stays beside it."""
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if (failing == "second" and Path(src).name.endswith(".partial")) or (failing == "first" and Path(src) == final):
            raise error
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(type(error)):
        with staging_dir(final) as stage:
            (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert (final / "old.txt").read_text() == "old"


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "bench.md"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["bench.md"] and target.read_bytes() == b"old"


def test_staging_dir_swaps_beside_a_stale_folder_from_a_killed_run(tmp_path: Path) -> None:
    """A killed run can leave hidden folders beside the target; the swap never trips on them (its names are fresh)."""
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    stale = tmp_path / f".artifact.old-{os.getpid()}"  # the fixed name an earlier version used
    stale.mkdir()
    (stale / "left.txt").write_text("left behind")
    with staging_dir(final) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert (stale / "left.txt").read_text() == "left behind"  # not ours: left alone


def test_first_line_of_an_exception():
    """Error lines quote a library's exception by its first line; an empty message gives the type's name (the
    hand-written `str(exc).splitlines()[0]` it replaced raised IndexError there)."""
    from bertpack.errors import first_line

    assert first_line(ValueError("bad input\nTraceback details")) == "bad input"
    assert first_line(RuntimeError("")) == first_line(RuntimeError("  \n ")) == "RuntimeError"
    assert first_line(OSError("x" * 500)) == "x" * 200 and first_line(OSError("x" * 500), 10) == "x" * 10
