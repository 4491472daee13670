"""Two bertpack processes on one path at once, and a path replaced under a running process: a second train, export
or bench aimed at an --out another one is writing is refused with one line naming it, and a `bentoml serve` whose
artifact folder was re-exported never lets a restarted worker switch models on its own (real processes throughout;
the first process is held with SIGSTOP once it holds its lock, so nothing depends on timing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from bertpack.locks import lock_path
from serving import local_server
from tests.conftest import REPO, make_tiny_run, run_cli

pytestmark = pytest.mark.slow
QUICK_EXPORT = ["--limit", "24", "--calibration-samples", "16", "--no-flip-check", "--no-store"]


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bertpack.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _hold_when_locked(proc: subprocess.Popen, out: Path, ready: Path | None = None, timeout: float = 180) -> None:
    """Wait until PROC holds OUT's lock (and READY exists), then stop it there (SIGSTOP) for as long as the test
    needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if lock_path(out).read_text().split(" ")[0] == str(proc.pid) and (ready is None or ready.exists()):
                os.kill(proc.pid, signal.SIGSTOP)
                return
        except (FileNotFoundError, IndexError):
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{proc.args[3]} never took the lock of {out}: {proc.communicate()[1][-2000:]}")


def _refused_by(proc: subprocess.CompletedProcess, holder: subprocess.Popen, command: str, out: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: --out {out} is being written by bertpack {command} (pid {holder.pid})"), lines[
        0
    ]


def test_second_train_and_resume_on_a_running_run_are_refused(tmp_path, tiny_run, synthetic_cola):
    out = tmp_path / "runs" / "r"
    args = ["--model", str(tiny_run / "model"), "--data", str(synthetic_cola), "--limit", "32", "--batch-size", "4"]
    first = _start("train", *args, "--max-steps", "100000", "--out", str(out))
    try:
        _hold_when_locked(first, out, ready=out / "bertpack_run.json")  # training: --resume reads its recipe
        _refused_by(run_cli("train", *args, "--max-steps", "2", "--out", str(out)), first, "train", out)
        _refused_by(run_cli("train", *args, "--max-steps", "2", "--out", str(out), "--overwrite"), first, "train", out)
        _refused_by(run_cli("train", "--resume", "--out", str(out)), first, "train", out)
    finally:
        first.kill()  # SIGKILL: no cleanup runs, and still the kernel drops its lock
        first.communicate(timeout=60)
    from bertpack.locks import writing

    with writing(out, "bertpack train"):  # the file it left is taken over, not a lock stuck forever
        assert lock_path(out).read_text().startswith(f"{os.getpid()} ")


def test_second_export_to_the_same_out_is_refused(tmp_path, tiny_run, synthetic_cola):
    out = tmp_path / "artifact"
    first = _start("export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), *QUICK_EXPORT)
    try:
        _hold_when_locked(first, out)
        for extra in ([], ["--overwrite"]):
            second = run_cli(
                "export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), *QUICK_EXPORT, *extra
            )
            _refused_by(second, first, "export", out)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    verified = run_cli("verify", str(out))  # one complete export: every file matches its manifest
    assert verified.returncode == 0 and verified.stdout.strip().endswith("verified"), verified.stdout + verified.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no lock, staging or work folder left


def test_second_bench_to_the_same_out_is_refused(tmp_path, tiny_artifact, synthetic_cola):
    out = tmp_path / "bench-out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bertpack.locks import writing\n"
            "with writing(Path(sys.argv[1]), 'bertpack bench'):\n    print('held', flush=True); time.sleep(600)",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        bench = run_cli(
            "bench",
            str(tiny_artifact),
            "--out",
            str(out),
            "--data",
            str(synthetic_cola),
            "--engines",
            "pytorch_fp32,onnx_fp32",
            "--no-end-to-end",
            "--no-profile",
            "--batch-sizes",
            "1",
        )
        _refused_by(bench, holder, "bench", out)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_versions_of_exports_in_the_same_second_differ(tiny_run):
    """Two exports of one checkpoint started in the same second (a script exporting static and dynamic int8 side by
    side) shared a version: the second's registration failed, and two different artifacts carried one version."""
    from bertpack.manifest import make_version

    a, b = (make_version(tiny_run / "model", datetime(2026, 1, 2, 3, 4, 5, us)) for us in (1000, 2000))
    assert a != b and a.startswith("20260102-030405-") and a.split("-")[-1] == b.split("-")[-1]


def test_a_restarted_worker_does_not_switch_to_a_re_exported_folder(tmp_path, tiny_artifact, synthetic_cola):
    """`bertpack export --overwrite` of the folder a `bentoml serve` serves: the running worker keeps answering with
    the model it loaded (from memory), and a worker restarted afterwards (here: SIGKILLed, circus starts another) stops
    the server with one line instead of serving the new export beside workers that still serve the old one."""
    import shutil

    art = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, art)
    version = json.loads((art / "manifest.json").read_text())["version"]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BERTPACK_MODEL": str(art)}
    log = tmp_path / "serve.log"
    proc, url = local_server.start_server(env, log)
    try:
        other = make_tiny_run(tmp_path / "other-run", seed=1, distinct=True)
        proc_export = run_cli(
            "export", str(other), "--out", str(art), "--data", str(synthetic_cola), *QUICK_EXPORT, "--overwrite"
        )
        assert proc_export.returncode == 0, proc_export.stderr[-2000:]
        new_version = json.loads((art / "manifest.json").read_text())["version"]
        assert new_version != version
        r = httpx.post(f"{url}/classify", json={"sentences": ["The cat sat on the mat."]}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["model_version"] == version  # the loaded model
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["model_version"] == version
        os.kill(info["pid"], signal.SIGKILL)
        assert proc.wait(timeout=120) == 1  # the restarted worker refused, and took the server down with it
    finally:
        local_server.stop_server(proc)
    text = log.read_text()
    assert (
        f"cannot serve: {art} was replaced since `bentoml serve` started (it checked version {version}, "
        f"the folder now holds {new_version}" in text
    ), text[-3000:]
