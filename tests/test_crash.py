"""What a `bertpack` command killed outright (SIGKILL: no cleanup runs) or stopped by the file system leaves behind, and
what the next command makes of it: nothing half-written that a later command would take as complete, one `error:` line
for a full disk or a file size limit, and no manual cleanup before the next run. Real processes, real files, a real
BentoML store; the file size limit (RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG as on a full disk)
needs no privileges."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertpack.files import remove_leftovers, staging_dir
from bertpack.locks import writing
from tests.conftest import REPO

pytestmark = pytest.mark.slow
QUICK_EXPORT = ["--limit", "24", "--calibration-samples", "16", "--no-flip-check", "--int8", "dynamic"]


def _cli(
    *args: str, env: dict | None = None, file_limit: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`bertpack ARGS`; with `file_limit` no file it writes may grow past that many bytes (EFBIG, as a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec: the write fails instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "bertpack.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if file_limit else None,
    )


def _one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line[line.index("error:") :] for line in re.split(r"[\r\n]", proc.stderr) if "error:" in line]
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), proc.stderr[-2000:]
    return lines[0]


def _kill_when(cmd: list[str], ready, env: dict | None = None, timeout: float = 180) -> None:
    """Start CMD, SIGKILL it as soon as ready() is true."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    assert proc.poll() is None, f"it ended before the moment to kill it: {proc.communicate()[1][-2000:]}"
    proc.kill()
    proc.wait()


# ----------------------------------------------------------------------------- leftovers of a killed writer
def test_remove_leftovers_clears_what_a_killed_writer_left(tmp_path: Path) -> None:
    """staging_dir's and work_dir's hidden folders beside a target are removed; an .old one is the previous target,
    put back when the target is gone (killed between the two renames of the swap); others' folders are left alone."""
    final = tmp_path / "art"
    for name in (
        ".art.abcd1234.partial",
        ".art.abcd_234.work",
        ".art.v2.abcd1234.partial",
        ".art.old-77",
        ".artx.abcd1234.work",
    ):
        (tmp_path / name).mkdir()
    old = tmp_path / ".art.zz9zz9zz.old"
    old.mkdir()
    (old / "manifest.json").write_text("the previous artifact")
    done = remove_leftovers(final)
    assert (final / "manifest.json").read_text() == "the previous artifact" and len(done) == 3, done
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".art.old-77",
        ".art.v2.abcd1234.partial",
        ".artx.abcd1234.work",
        "art",
    ]
    (
        tmp_path / ".art.abcd1234.old"
    ).mkdir()  # a swap killed after its second rename: the target is there, the .old is debris
    assert remove_leftovers(final) == [f"removed .art.abcd1234.old, left beside {final} by a killed run"]
    with staging_dir(final) as stage:  # and the swap itself leaves nothing beside the target
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".art.old-77",
        ".art.v2.abcd1234.partial",
        ".artx.abcd1234.work",
        "art",
    ]


def test_killed_export_leaves_the_old_artifact_and_the_next_export_cleans_up(
    tmp_path: Path, tiny_run: Path, synthetic_cola: Path
) -> None:
    """SIGKILL in the middle of an export: --out keeps the previous, complete artifact (it still verifies), the hidden
    staging and scratch folders (hundreds of MB on a real model) are removed by the next export to that --out, which
    succeeds without manual cleanup."""
    out = tmp_path / "art"
    args = ["export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), "--no-store", *QUICK_EXPORT]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((out / "manifest.json").read_text())["version"]
    # killed once the staging folder holds the ONNX models: well into the export
    _kill_when(
        [sys.executable, "-m", "bertpack.cli", *args, "--overwrite"],
        lambda: any(tmp_path.glob(".art.*.partial/model_fp16.onnx")),
    )
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".art.") and p.is_dir())
    assert left and all(name.endswith((".partial", ".work")) for name in left), left
    assert json.loads((out / "manifest.json").read_text())["version"] == before
    checked = _cli("verify", str(out))
    assert checked.returncode == 0, checked.stderr[-2000:]
    again = _cli(*args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    notes = [line for line in again.stdout.splitlines() if line.startswith("note: removed")]
    assert len(notes) == len(left), again.stdout[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the lock file is gone too: no run holds it


def test_export_killed_while_registering_leaves_the_store_usable(tmp_path: Path, tiny_artifact: Path) -> None:
    """SIGKILL while the artifact is copied into the BentoML store: the store holds no half-copied entry (BentoML's
    own save copied into the final entry folder, which then had no model.yaml and broke `bentoml models list` for the
    whole store); the next registration removes the killed one's private copy."""
    import shutil

    home = tmp_path / "bentoml"
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    with open(artifact / "zz-padding.bin", "wb") as fh:  # a copy long enough to be killed in the middle of it
        fh.truncate(300 * 2**20)
    manifest = artifact / "manifest.json"
    code = (
        f"import json; from export.store import register; print(register({str(artifact)!r}, "
        f"json.load(open({str(manifest)!r}))))"
    )
    entries = home / "models" / "bertpack-cola"
    scratch = tmp_path / "tmp"  # BentoML's own temp folder (model.yaml) of the killed process lands here, not in /tmp
    scratch.mkdir()
    _kill_when(
        [sys.executable, "-c", code],
        lambda: any(entries.glob("2*")) or any(home.glob(".bertpack-register-*/bertpack-cola/2*")),
        env={"BENTOML_HOME": str(home), "TMPDIR": str(scratch)},
    )
    sizes = {p.name: p.stat().st_size for p in artifact.iterdir()}
    half = [
        p.name
        for p in entries.glob("2*")
        if not (p / "model.yaml").is_file()
        or {f: (p / f).stat().st_size if (p / f).is_file() else None for f in sizes} != sizes
    ]
    assert not half, f"half-registered store entries: {half}"
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "models", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "BENTOML_HOME": str(home)},
        timeout=120,
    )
    assert listed.returncode == 0 and "Failed" not in listed.stdout + listed.stderr, listed.stdout + listed.stderr
    stored = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_HOME": str(home)},
    )
    assert stored.returncode == 0 and stored.stdout.startswith("bertpack-cola:"), stored.stderr[-2000:]
    assert not list(home.glob(".bertpack-register-*"))
    assert (entries / "latest").read_text() == stored.stdout.strip().split(":", 1)[1]


# ----------------------------------------------------------------------------- full disk, file size limit, store
def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_run: Path, synthetic_cola: Path
) -> None:
    """Writes that fail (EFBIG here; ENOSPC reads the same) end the export with one line naming the problem and the
    fix, not a traceback, and nothing beside --out (nor a half artifact in it)."""
    out = tmp_path / "art"
    proc = _cli(
        "export",
        str(tiny_run),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--no-store",
        *QUICK_EXPORT,
        file_limit=1_000_000,
    )
    _one_error_line(proc, "error: export stopped: File too large", f"nothing was written to {out}", "ulimit -f")
    assert list(tmp_path.iterdir()) == []


def test_bench_on_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_artifact: Path, synthetic_cola: Path
) -> None:
    out = tmp_path / "bench"
    proc = _cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--batch-sizes",
        "1,8",
        "--min-time",
        "0.05",
        "--min-samples",
        "2",
        "--max-passes",
        "1",
        "--no-profile",
        "--no-end-to-end",
        "--engines",
        "pytorch_fp32,onnx_fp32",
        file_limit=20_000,
    )
    _one_error_line(proc, "error: bench stopped: File too large", f"nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit", [2_000_000, 6_000_000], ids=["weights-cut-off", "optimizer-cut-off"])
def test_train_on_a_full_disk_is_one_line_and_keeps_no_cut_off_checkpoint(
    tmp_path: Path, tiny_run: Path, synthetic_cola: Path, limit: int
) -> None:
    """The first checkpoint cannot be written whole (safetensors reports it as its own error, torch's optimizer state
    as "unexpected pos", no error number): one line; the cut-off checkpoint, which --resume could not load, is
    removed, and with it the run folder of a new run that has no other checkpoint."""
    out = tmp_path / "run"
    proc = _cli(
        "train",
        "--model",
        str(tiny_run / "model"),
        "--data",
        str(synthetic_cola),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--evals-per-epoch",
        "2",
        "--batch-size",
        "8",
        file_limit=limit,
    )
    _one_error_line(proc, "error: training stopped:", "ulimit -f", f"nothing was kept in {out} (no checkpoint yet)")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_model_store_is_refused_before_the_export(
    tmp_path: Path, tiny_run: Path, synthetic_cola: Path
) -> None:
    """A $BENTOML_HOME that cannot be written failed only at the very end, after the slow work, with a traceback."""
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "art"
    proc = _cli(
        "export",
        str(tiny_run),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        *QUICK_EXPORT,
        env={"BENTOML_HOME": str(tmp_path / "file" / "bentoml")},
    )
    _one_error_line(proc, "the BentoML model store in", "is a file, not a folder", "--no-store")
    assert "exporting" not in proc.stdout and not out.exists()


# ----------------------------------------------------------------------------- a killed train
def test_export_of_a_killed_training_run_says_it_was_killed(tmp_path: Path, synthetic_cola: Path) -> None:
    """A run folder still marked "training": while `bertpack train` holds it the export says to wait for it; once no
    process holds it (its train was killed), waiting would be forever, and the export says to resume or retrain."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "bertpack_run.json").write_text(json.dumps({"kind": "bertpack-run", "status": "training", "config": {}}))
    args = ["export", str(run), "--out", str(tmp_path / "art"), "--data", str(synthetic_cola), "--no-store"]
    _one_error_line(
        _cli(*args),
        "it was killed",
        f"no checkpoint to resume from: retrain with `bertpack train --overwrite --out {run}`",
    )
    (run / "checkpoints" / "checkpoint-2").mkdir()
    _one_error_line(_cli(*args), "it was killed", f"continue it with `bertpack train --resume --out {run}`")
    with writing(run, "bertpack train"):  # as a live train holds it
        _one_error_line(_cli(*args), f"wait for bertpack train (pid {os.getpid()}) to finish")
