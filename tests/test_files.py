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


def test_staging_dir_keeps_the_old_folder_when_the_swap_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap is two renames (old aside, new in); if the second fails the old folder goes back (it was left as a
    hidden .NAME.*.old folder with the new one as .NAME.*.partial)."""
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".partial"):
            raise KeyboardInterrupt  # Ctrl-C between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(final) as stage:
            (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert (final / "old.txt").read_text() == "old"


def test_staging_dir_cleans_up_when_the_old_folder_cannot_move_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure on the first rename (the old folder aside) leaves the old folder and no hidden staging folder."""
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == final:
            raise OSError(16, "Device or resource busy")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
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
